"""Training configuration: one flat, typed object with defaults that work, and named presets."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from bintally.errors import ConfigError
from bintally.labels import DECODINGS, LabelSpace
from bintally.models.config import FEATURES, HEADS, ModelConfig
from bintally.settings import check_range, check_types

MODES = ("frozen", "partial", "full")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "sgdr", "step")
BALANCING = ("none", "sampler", "weights")
OVERFLOW = ("class", "exclude")
SELECT = ("best", "last")  # which epoch's model a run keeps: the best on validation, or the last (cross-validation's honest choice)
# settings that may change when a run is resumed: they do not change what is computed
MAX_FOLDS = 20
RESUMABLE_CHANGES = {"workers", "device", "profile", "out", "progress", "max_steps"}
# a resumed run may be asked to go on for more epochs than it was started with
EXTENDABLE = {"epochs"}


@dataclass
class TrainConfig:
    data: str | None = None  # manifest, bucket folder, class folders or CSV; None: the bundled sample
    out: str | None = None  # None: a new numbered run directory, runs/train/run-NNN
    preset: str | None = None
    # model
    backbone: str = "efficientnet_lite0"
    head: str = "ordinal"
    features: str = "pooled"  # what the head reads: pooled final features, or the stride-16 map (a small conv head)
    # the label space; None: the one the manifest was split with (0-5 and an overflow class if it was not split)
    min_count: int | None = None
    max_count: int | None = None
    overflow: str | None = None  # class: counts above max_count form one class; exclude: train and validate on min..max only
    pretrained: bool = True
    weights: str | None = None
    init: str | None = None  # start from this trained model's weights (with folds: a cross-validation run, fold by fold)
    dropout: float = 0.2
    decode: str = "auto"  # argmax | median | expected; auto: median for the ordinal head
    # what is trained
    mode: str = "full"  # frozen: head on cached features; partial: top `unfreeze` stages too; full
    unfreeze: int = 2
    image_size: int = 224
    # optimisation
    epochs: int = 5
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    backbone_lr_scale: float = 0.3  # backbone learning rate = lr * this
    weight_decay: float = 0.02
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    restart_epochs: int = 2  # sgdr: first cycle length
    step_epochs: int = 2  # step: decay every this many epochs ...
    step_gamma: float = 0.3  # ... by this factor
    label_smoothing: float = 0.1
    balance: str = "none"
    ema: float = 0.0  # decay of the weight EMA; 0 turns it off
    # model selection
    select: str = "best"  # keep the epoch best on validation (counts 0-5), or the last one
    folds: int = 0  # >= 2: grouped K-fold cross-validation over train+val; the K models form the run's ensemble
    # execution
    amp: bool | None = None  # bf16 autocast; None: on for GPUs, off on CPU (where it is slower)
    channels_last: bool = True
    compile: bool = False
    tta: bool = True  # average with the horizontally flipped photo when evaluating
    workers: int = 2
    device: str = "auto"
    seed: int = 0
    max_steps: int | None = None  # stop after this many optimiser steps (smoke tests)
    profile: bool = False
    progress: bool = True

    def __post_init__(self):
        check_types(self)
        check_choice("mode", self.mode, MODES)
        check_choice("head", self.head, HEADS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("balance", self.balance, BALANCING)
        check_choice("decode", self.decode, ("auto", *DECODINGS))
        check_choice("features", self.features, FEATURES)
        check_choice("select", self.select, SELECT)
        if self.folds == 1 or self.folds > MAX_FOLDS:
            raise ConfigError(f"folds must be 0 (no cross-validation) or 2 to {MAX_FOLDS}, got {self.folds}")
        if self.overflow is not None:
            check_choice("overflow", self.overflow, OVERFLOW)
        for name in ("data", "out", "weights", "init"):  # '' would silently mean the current folder
            if getattr(self, name) is not None and not getattr(self, name).strip():
                raise ConfigError(f"{name} is empty: give a file or folder name, or leave it out for the default")
        for name in ("epochs", "batch_size", "restart_epochs", "step_epochs", "max_steps"):
            check_range(name, getattr(self, name), low=1)
        for name in ("min_count", "max_count", "unfreeze", "workers", "folds", "weight_decay", "backbone_lr_scale", "warmup_epochs"):
            check_range(name, getattr(self, name), low=0)
        check_range("seed", self.seed, 0, 2**32 - 1)  # what every random generator accepts (as `data split --seed`)
        check_range("image_size", self.image_size, 16, 2048)
        check_range("lr", self.lr, 0, 10, low_open=True)
        check_range("momentum", self.momentum, 0, 1)
        check_range("step_gamma", self.step_gamma, 0, 1, low_open=True)
        for name in ("label_smoothing", "dropout", "ema"):
            check_range(name, getattr(self, name), 0, 1, high_open=True)
        if None not in (self.min_count, self.max_count):
            _ = self.labels  # min_count <= max_count

    @property
    def labels(self) -> LabelSpace:
        """The label space (after `with_labels` has filled in what was left to the manifest)."""
        return LabelSpace.of(self.min_count or 0, 5 if self.max_count is None else self.max_count, self.overflow or "class")

    def with_labels(self, manifest: LabelSpace) -> "TrainConfig":
        """Label-space settings left unset take the manifest's."""
        return replace(self, min_count=manifest.min_count if self.min_count is None else self.min_count,
                       max_count=manifest.max_count if self.max_count is None else self.max_count,
                       overflow=manifest.overflow_policy if self.overflow is None else self.overflow)

    def model_config(self) -> ModelConfig:
        labels = self.labels
        return ModelConfig(backbone=self.backbone, head=self.head, min_count=labels.min_count, max_count=labels.max_count,
                           pretrained=self.pretrained, weights=self.weights, dropout=self.dropout, decode=self.decode,
                           overflow=labels.overflow, features=self.features)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str | Path | None = None) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        where = f"{source}: " if source else ""
        if unknown:
            raise ConfigError(f"{where}unknown settings: {sorted(unknown)}")
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}: use one of {', '.join(allowed)}")


PRESETS: dict[str, dict] = {
    # head-only training on cached frozen features: the CPU fast path (make demo)
    "fast": dict(mode="frozen", head="linear", epochs=15, batch_size=64, lr=2e-3, weight_decay=0.05,
                 dropout=0.5, label_smoothing=0.1, warmup_epochs=1, image_size=224),
    # full fine-tune of EfficientNet-Lite0
    "finetune": dict(mode="full", head="ordinal", epochs=4, batch_size=32, lr=1e-3, backbone_lr_scale=0.3,
                     image_size=224, label_smoothing=0.1, ema=0.0),
}
# the seeds' recipe: a frozen ResNet with a two-layer FC head (no ResNet ImageNet weights offline: random init)
PRESETS["seed-baseline"] = dict(mode="frozen", backbone="resnet18", pretrained=False, head="mlp", epochs=15, batch_size=64,
                                optimizer="adam", lr=1e-3, weight_decay=0.0, dropout=0.5, label_smoothing=0.0, warmup_epochs=1)
# a small conv head on the frozen, cached stride-16 map of EfficientNet-Lite0, trained on counts 0-5
PRESETS["spatial"] = dict(mode="frozen", features="stride16", head="ordinal", max_count=5, overflow="exclude", epochs=10,
                          batch_size=64, lr=1e-3, weight_decay=0.05, dropout=0.2, label_smoothing=0.1, warmup_epochs=1,
                          select="last", image_size=224)
# the recipe chosen by 3-fold cross-validation (docs/benchmarks.md, "Accuracy"): `spatial` trained on 5 folds of
# train+val, whose 5 models form the served ensemble
PRESETS["best"] = PRESETS["spatial"] | dict(folds=5)


def resolve_config(preset: str | None = None, **overrides) -> TrainConfig:
    """Defaults, then the preset, then explicit settings (None means 'not given')."""
    values = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
        values |= PRESETS[preset] | {"preset": preset}
    values |= {k: v for k, v in overrides.items() if v is not None}
    return TrainConfig.from_dict(values)


def read_config_file(path: str | Path) -> dict:
    """Settings from a JSON file such as a run's config.json or `bintally tune`'s best_config.json."""
    path = Path(path)
    try:
        values = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a JSON file of settings") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object of settings")
    unknown = set(values) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"{path}: unknown settings {sorted(unknown)}")
    TrainConfig.from_dict({k: v for k, v in values.items() if k != "preset"}, source=path)  # types and ranges, named by this file
    return values


def config_differences(saved: TrainConfig, requested: dict) -> dict[str, tuple]:
    """Explicit settings that differ from a saved run's (those that change what is computed)."""
    saved_values = saved.to_dict()
    return {k: (saved_values[k], v) for k, v in requested.items()
            if v is not None and k not in RESUMABLE_CHANGES | EXTENDABLE and saved_values.get(k) != v}

