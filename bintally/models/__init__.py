"""Counting models: backbones (EfficientNet-Lite, timm, torchvision ResNets) and heads (linear, MLP, ordinal).

Names load on first use, so that what needs only `ModelConfig` (the command line, say) does not import torch.
"""

from importlib import import_module

from bintally.models.config import DECODINGS, HEADS, ModelConfig

LAZY = {"build_backbone": "backbones", "efficientnet_lite": "backbones", "build_head": "heads",
        "CountingModel": "model", "describe_probs": "model"}

__all__ = ["DECODINGS", "HEADS", "CountingModel", "ModelConfig", "build_backbone", "build_head", "describe_probs", "efficientnet_lite"]


def __getattr__(name: str):
    if name in LAZY:
        return getattr(import_module(f"bintally.models.{LAZY[name]}"), name)
    raise AttributeError(f"module 'bintally.models' has no attribute {name!r}")
