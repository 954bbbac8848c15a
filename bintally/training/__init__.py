"""Training: config and presets, the engine (single process or torchrun DDP), health checks, feature cache.

The engine (and torch) load on first use of `train`, `Interrupted` or `TrainResult`.
"""

from importlib import import_module

from bintally.training.config import PRESETS, TrainConfig, resolve_config

__all__ = ["PRESETS", "Interrupted", "TrainConfig", "TrainResult", "resolve_config", "train"]


def __getattr__(name: str):
    if name in ("Interrupted", "TrainResult", "train"):
        return getattr(import_module("bintally.training.engine"), name)
    raise AttributeError(f"module 'bintally.training' has no attribute {name!r}")
