"""Training: config and presets, single runs (one process or torchrun DDP) and K-fold cross-validation, health checks, feature cache.

`train` (in `run`) chooses cross-validation or a single run (`engine`); `crossval` builds on `engine`.
The engine (and torch) load on first use of `train`, `Interrupted`, `TrainResult` or `CrossValResult`.
"""

from importlib import import_module

from bintally.training.config import PRESETS, TrainConfig, resolve_config

__all__ = ["PRESETS", "CrossValResult", "Interrupted", "TrainConfig", "TrainResult", "resolve_config", "train"]
LAZY = {"Interrupted": "engine", "TrainResult": "engine", "CrossValResult": "crossval", "train": "run"}


def __getattr__(name: str):
    if name in LAZY:
        return getattr(import_module(f"bintally.training.{LAZY[name]}"), name)
    raise AttributeError(f"module 'bintally.training' has no attribute {name!r}")
