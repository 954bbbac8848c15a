"""Counting models: backbones (EfficientNet-Lite, timm, torchvision ResNets), heads (linear, MLP, ordinal; over pooled
features or a stride-16 map) and ensembles.

Names load on first use, so that what needs only `ModelConfig` (the command line, say) does not import torch.
"""

from importlib import import_module

from bintally.labels import DECODINGS
from bintally.models.config import FEATURES, HEADS, ModelConfig

LAZY = {"build_backbone": "backbones", "efficientnet_lite": "backbones", "build_head": "heads",
        "CountingModel": "model", "CountingEnsemble": "model", "ProbabilityModel": "model", "build_model": "model"}

__all__ = ["DECODINGS", "FEATURES", "HEADS", "CountingEnsemble", "CountingModel", "ModelConfig", "build_model",
            "build_backbone", "ProbabilityModel", "build_head", "efficientnet_lite"]


def __getattr__(name: str):
    if name in LAZY:
        return getattr(import_module(f"bintally.models.{LAZY[name]}"), name)
    raise AttributeError(f"module 'bintally.models' has no attribute {name!r}")
