"""Counting models: backbones (EfficientNet-Lite, timm, torchvision ResNets) and heads (linear, MLP, ordinal).

Names load on first use, so that what needs only `ModelConfig` (the command line, say) does not import torch.
"""

from importlib import import_module

from bintally.labels import DECODINGS
from bintally.models.config import HEADS, ModelConfig

LAZY = {"build_backbone": "backbones", "efficientnet_lite": "backbones", "build_head": "heads",
        "CountingModel": "model", "ProbabilityModel": "model"}

__all__ = ["DECODINGS", "HEADS", "CountingModel", "ModelConfig", "build_backbone", "ProbabilityModel", "build_head", "efficientnet_lite"]


def __getattr__(name: str):
    if name in LAZY:
        return getattr(import_module(f"bintally.models.{LAZY[name]}"), name)
    raise AttributeError(f"module 'bintally.models' has no attribute {name!r}")
