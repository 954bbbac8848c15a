"""`TuneConfig`: the settings of a hyperparameter search (without importing Optuna or torch), and each trial's training config."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bintally.errors import ConfigError
from bintally.models.config import FEATURES
from bintally.progress import PROGRESS_HELP
from bintally.settings import check_settings, setting
from bintally.training.config import DATA_HELP, MODES, PRESETS, TrainConfig, resolve_config

PRUNERS = ("median", "hyperband", "none")


@dataclass
class TuneConfig:
    data: str | None = setting(None, help=DATA_HELP)
    study: str = setting("bintally", help="Study name; the same name resumes the study.")
    storage: str | None = setting(None, help="Optuna storage (a SQLAlchemy URL), e.g. postgresql://host/db. Default: sqlite:///OUT/optuna.db.")
    out: str = setting("runs/tune", help="Outputs go to OUT/STUDY/.")
    n_trials: int = setting(50, low=1, help="Trials to add to the study in this call (all workers together).")
    timeout: float | None = setting(None, low=0, low_open=True, help="Stop starting new trials after this many seconds.")
    jobs: int = setting(1, low=1, help="Local worker processes sharing the study.")
    pruner: str = setting("median", choices=PRUNERS, help="Stops unpromising trials early.")
    mode: str = setting("frozen", choices=MODES, help="frozen (heads on cached features), partial or full.")
    preset: str | None = setting("fast", choices=tuple(PRESETS), help="Fixed settings the search leaves alone: " + ", ".join(PRESETS) + ".")
    fixed: dict = setting(default_factory=dict, cli=False)  # changes to the preset (TrainConfig fields): bintally tune --config
    backbones: list[str] = setting(default_factory=lambda: ["efficientnet_lite0"], separator=",", help="Comma-separated backbones to try.")
    image_sizes: list[int] = setting(default_factory=lambda: [224], low=16, high=2048, separator=",",
                                     help="Comma-separated image sizes to try.")
    features: list[str] = setting(default_factory=lambda: ["pooled"], choices=FEATURES, separator=",",
                                  help="Comma-separated: pooled and/or stride16 (the spatial head on the cached stride-16 map).")
    min_epochs: int = setting(5, low=1, help="Fewest epochs a trial may ask for.")
    max_epochs: int = setting(30, low=1, help="Most epochs a trial may ask for (and Hyperband's largest budget).")
    max_count: int = setting(5, low=0, help="Largest count with its own class.")
    seed: int = setting(0, low=0, help="Seed of the sampler (each worker adds its own offset) and of each trial's training.")
    progress: bool = setting(True, help=PROGRESS_HELP)

    def __post_init__(self):
        check_settings(self, "tune setting")
        if self.min_epochs > self.max_epochs:
            raise ConfigError(f"min_epochs ({self.min_epochs}) is more than max_epochs ({self.max_epochs})")
        if not self.backbones or not self.image_sizes:
            raise ConfigError("give at least one backbone and one image size")
        for name in self.backbones:
            check_backbone(name)
        # an unknown preset or fixed setting is refused here, not by the first trial
        if trial_config(self, {"backbone": self.backbones[0], "image_size": self.image_sizes[0]}, self.data, self.out).folds >= 2:
            raise ConfigError("each trial is a single run: tune without folds, then cross-validate the best config")

    @property
    def study_dir(self) -> Path:
        return Path(self.out) / self.study

    @property
    def storage_url(self) -> str:
        return self.storage or f"sqlite:///{Path(self.out) / 'optuna.db'}"


def check_backbone(name: str) -> None:
    """An unknown name is refused before any trial starts, not by every trial."""
    import timm

    from bintally.models.backbones import LITE_VARIANTS, RESNETS

    if name not in LITE_VARIANTS + RESNETS and not timm.is_model(name):
        raise ConfigError(f"unknown backbone {name!r}: use {', '.join(LITE_VARIANTS + RESNETS)} or a timm model name")


def trial_config(tc: TuneConfig, settings: dict, data: str, out: str) -> TrainConfig:
    run = {"data": data, "out": out, "mode": tc.mode, "max_count": tc.max_count, "seed": tc.seed, "progress": False}
    return resolve_config(tc.preset, **(tc.fixed | run | settings))
