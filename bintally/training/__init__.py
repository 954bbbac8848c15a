"""Training: config and presets, the engine (single process or torchrun DDP), health checks, feature cache."""

from bintally.training.config import PRESETS, TrainConfig, resolve_config
from bintally.training.engine import Interrupted, TrainResult, train

__all__ = ["PRESETS", "Interrupted", "TrainConfig", "TrainResult", "resolve_config", "train"]
