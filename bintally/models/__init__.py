"""Counting models: backbones (EfficientNet-Lite, timm, torchvision ResNets) and heads (linear, MLP, ordinal)."""

from bintally.models.backbones import build_backbone, efficientnet_lite
from bintally.models.heads import HEADS, build_head
from bintally.models.model import CountingModel, ModelConfig, describe_probs

__all__ = ["HEADS", "CountingModel", "ModelConfig", "build_backbone", "build_head", "describe_probs", "efficientnet_lite"]
