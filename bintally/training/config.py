"""Training configuration: one flat, typed object with defaults that work, and named presets."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from bintally.errors import ConfigError
from bintally.models.model import ModelConfig

MODES = ("frozen", "partial", "full")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "sgdr", "step")
BALANCING = ("none", "sampler", "weights")
OVERFLOW = ("class", "exclude")
# settings that may change when a run is resumed: they do not change what is computed
RESUMABLE_CHANGES = {"workers", "device", "profile", "out", "progress", "max_steps"}


@dataclass
class TrainConfig:
    data: str | None = None  # manifest, bucket folder, class folders or CSV; None: the bundled sample
    out: str = "runs/train"
    preset: str | None = None
    # model
    backbone: str = "efficientnet_lite0"
    head: str = "ordinal"
    max_count: int = 5
    overflow: str = "class"  # class: counts above max_count form one class; exclude: train and validate on 0..max_count only
    pretrained: bool = True
    weights: str | None = None
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
        check_choice("mode", self.mode, MODES)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_choice("balance", self.balance, BALANCING)
        check_choice("overflow", self.overflow, OVERFLOW)
        for name in ("epochs", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError("label_smoothing must be in [0, 1)")

    def model_config(self) -> ModelConfig:
        return ModelConfig(backbone=self.backbone, head=self.head, max_count=self.max_count,
                           pretrained=self.pretrained, weights=self.weights, dropout=self.dropout, decode=self.decode,
                           overflow=self.overflow == "class")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ConfigError(f"unknown settings: {sorted(unknown)}")
        return cls(**values)

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
# the best recipe on the mirror's validation split so far (docs/benchmarks.md)
PRESETS["best"] = PRESETS["finetune"] | dict(balance="weights", epochs=3, workers=1)


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
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a JSON object of settings")
    unknown = set(values) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise ConfigError(f"{path}: unknown settings {sorted(unknown)}")
    return values


def config_differences(saved: TrainConfig, requested: dict) -> dict[str, tuple]:
    """Explicit settings that differ from a saved run's (those that change what is computed)."""
    saved_values = saved.to_dict()
    return {k: (saved_values[k], v) for k, v in requested.items()
            if v is not None and k not in RESUMABLE_CHANGES and saved_values.get(k) != v}

