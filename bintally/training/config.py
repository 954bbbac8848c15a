"""Training configuration: one typed object holding the model's config (`TrainConfig.model`), with defaults that work, and named presets.

Each field states its help, choices and range once; `bintally train` offers every field as an option built from them, the
model's included. Files, presets and the command line use the flat form (`TrainConfig.to_dict`/`from_dict`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from pathlib import Path

from bintally.errors import ConfigError
from bintally.labels import LABEL_SETTINGS, LabelSpace, overflow_flag, overflow_word
from bintally.models.config import ModelConfig
from bintally.progress import PROGRESS_HELP
from bintally.settings import check_settings, described_settings, setting

MODES = ("frozen", "partial", "full")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "sgdr", "step")
BALANCING = ("none", "sampler", "weights")
SELECT = ("best", "last")  # which epoch's model a run keeps: the best on validation, or the last (cross-validation's honest choice)
MAX_FOLDS = 20
# settings that may change when a run is resumed: they do not change what is computed
RESUMABLE_CHANGES = {"workers", "device", "profile", "out", "progress", "max_steps"}
# a resumed run may be asked to go on for more epochs than it was started with
EXTENDABLE = {"epochs"}
NOT_EMPTY = ("data", "out", "weights", "init")  # '' would silently mean the current folder
# the model's settings a training config states (an ensemble's members come from cross-validation, not from settings)
MODEL_SETTINGS = tuple(f.name for f, spec in described_settings(ModelConfig) if spec.cli)
DATA_HELP = "Split manifest, bucket folder, class folders or CSV. Default: the bundled sample."

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
# every count a bin holds: the same frozen stride-16 map under a hurdle head (an ordinal head for 0-5, another for 6-20,
# and a gate between them) plus the class "21+"; 5 folds (docs/benchmarks.md, "Whole count range")
PRESETS["whole-range"] = PRESETS["spatial"] | dict(head="hurdle", max_count=20, overflow="class", folds=5)


@dataclass
class TrainConfig:
    data: str | None = setting(None, help=DATA_HELP)
    out: str | None = setting(None, help="Run directory. Default: a new numbered one, runs/train/run-NNN.")
    preset: str | None = setting(None, choices=tuple(PRESETS), help="Named recipe: " + ", ".join(PRESETS) + ".")
    # the model and its label space (`model.labels`)
    model: ModelConfig = setting(default_factory=ModelConfig)
    # the label-space settings the manifest decides (`with_labels`): by default all; `from_dict` names those not given, and
    # a config built around a ModelConfig whose label space is meant passes ()
    labels_from_manifest: tuple[str, ...] = setting(LABEL_SETTINGS, choices=LABEL_SETTINGS, cli=False)
    init: str | None = setting(None, help="Start from a trained model's weights (a run or model folder; with --folds, "
                                          "a cross-validation run over the same folds).")
    # what is trained
    mode: str = setting("full", choices=MODES, help="frozen (head on cached features), partial or full fine-tuning.")
    unfreeze: int = setting(2, low=0, help="partial: how many top backbone stages to train.")
    image_size: int = setting(224, low=16, high=2048, help="Input size in pixels.")
    # optimisation
    epochs: int = setting(5, low=1, help="Passes over the training photos.")
    batch_size: int = setting(32, low=1, help="Per process.")
    optimizer: str = setting("adamw", choices=OPTIMIZERS, help="adam, adamw (decoupled weight decay) or sgd (Nesterov, with --momentum).")
    lr: float = setting(1e-3, low=0, high=10, low_open=True, help="Head learning rate.")
    backbone_lr_scale: float = setting(0.3, low=0, help="Backbone lr = lr x this.")
    weight_decay: float = setting(0.02, low=0, help="Weight decay (decoupled for adamw).")
    momentum: float = setting(0.9, low=0, high=1, help="SGD momentum.")
    schedule: str = setting("cosine", choices=SCHEDULES, help="cosine, sgdr (warm restarts) or step; all with warm-up.")
    warmup_epochs: float = setting(0.5, low=0, help="Linear learning-rate warm-up, in epochs (fractions allowed).")
    restart_epochs: int = setting(2, low=1, help="sgdr: length of the first cycle (doubles each restart).")
    step_epochs: int = setting(2, low=1, help="step: decay every this many epochs.")
    step_gamma: float = setting(0.3, low=0, high=1, low_open=True, help="step: decay factor.")
    label_smoothing: float = setting(0.1, low=0, high=1, high_open=True, help="Label smoothing of the training targets.")
    balance: str = setting("none", choices=BALANCING, help="none, sampler (class-balanced sampling) or weights (loss weights).")
    ema: float = setting(0.0, low=0, high=1, high_open=True, help="EMA decay of the weights, e.g. 0.999; 0 = off.")
    # model selection
    select: str = setting("best", choices=SELECT, help="Keep the epoch best on validation (counts 0-5), or the last epoch.")
    folds: int = setting(0, low=0, high=MAX_FOLDS, help="K >= 2: grouped K-fold cross-validation over train+val; "
                                                        "RUN/model is the ensemble of the K fold models.")
    # execution
    amp: bool | None = setting(None, help="bf16 autocast (default: on for GPUs only, where it is faster).")
    channels_last: bool = setting(True, help="Channels-last memory format (faster convolutions on most hardware).")
    compile: bool = setting(False, help="torch.compile the model.")
    tta: bool = setting(True, help="Average with the mirrored photo when evaluating.")
    workers: int = setting(2, low=0, help="Data-loader processes.")
    device: str = setting("auto", help="auto, cpu, cuda, cuda:1 ...")
    seed: int = setting(0, low=0, high=2**32 - 1, help="Seed of the run's random generators.")  # what every generator accepts
    max_steps: int | None = setting(None, low=1, help="Stop after this many steps (smoke runs).")
    profile: bool = setting(False, flag=("--profile",), help="Write a PyTorch profiler trace to RUN/profile.")
    progress: bool = setting(True, help=PROGRESS_HELP)

    def __post_init__(self):
        check_settings(self)
        if self.folds == 1:
            raise ConfigError(f"folds must be 0 (no cross-validation) or 2 to {MAX_FOLDS}, got {self.folds}")
        flat = self.to_dict()
        for name in NOT_EMPTY:
            if flat[name] is not None and not flat[name].strip():
                raise ConfigError(f"{name} is empty: give a file or folder name, or leave it out for the default")
        if not {"min_count", "max_count"} & set(self.labels_from_manifest):
            _ = self.model.labels  # min_count <= max_count

    def with_labels(self, manifest: LabelSpace) -> "TrainConfig":
        """Label-space settings left unset take the manifest's."""
        taken = {name: getattr(manifest, name) for name in self.labels_from_manifest}
        return replace(self, model=replace(self.model, **taken), labels_from_manifest=())

    def to_dict(self) -> dict:
        """The flat form that config.json, checkpoints, model.json and settings files hold: the model's settings beside the
        others, overflow spelled 'class' or 'exclude', null for a label-space setting left to the manifest."""
        values = {}
        for f in fields(self):
            if f.name == "model":
                values |= {name: getattr(self.model, name) for name in MODEL_SETTINGS}
                values["overflow"] = overflow_word(self.model.overflow)
                values |= dict.fromkeys(self.labels_from_manifest)
            elif f.name != "labels_from_manifest":
                values[f.name] = getattr(self, f.name)
        return values

    @classmethod
    def from_dict(cls, values: dict, source: str | Path | None = None) -> "TrainConfig":
        """From the flat form (`to_dict`); a label-space setting that is null or left out takes the manifest's."""
        unknown = set(values) - set(SETTING_NAMES)
        where = f"{source}: " if source else ""
        if unknown:
            raise ConfigError(f"{where}unknown settings: {sorted(unknown)}")
        model = {k: v for k, v in values.items() if k in MODEL_SETTINGS and not (k in LABEL_SETTINGS and v is None)}
        own = {k: v for k, v in values.items() if k not in MODEL_SETTINGS}
        try:
            if "overflow" in model:
                model["overflow"] = overflow_flag(model["overflow"])
            return cls(model=ModelConfig(**model), labels_from_manifest=tuple(k for k in LABEL_SETTINGS if k not in model), **own)
        except ConfigError as e:
            raise ConfigError(f"{where}{e}") from None

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2))


SETTING_NAMES = tuple(TrainConfig().to_dict())  # the flat form's names


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
    unknown = set(values) - set(SETTING_NAMES)
    if unknown:
        raise ConfigError(f"{path}: unknown settings {sorted(unknown)}")
    TrainConfig.from_dict({k: v for k, v in values.items() if k != "preset"}, source=path)  # types and ranges, named by this file
    return values


def config_differences(saved: TrainConfig, requested: dict) -> dict[str, tuple]:
    """Explicit settings that differ from a saved run's (those that change what is computed)."""
    saved_values = saved.to_dict()
    return {k: (saved_values[k], v) for k, v in requested.items()
            if v is not None and k not in RESUMABLE_CHANGES | EXTENDABLE and saved_values.get(k) != v}

