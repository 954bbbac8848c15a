"""The counting model (backbone + head over a label space) and the one probability path every stage uses."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import nn

from bintally.errors import ConfigError
from bintally.models.backbones import build_backbone
from bintally.models.config import ModelConfig
from bintally.models.heads import build_head


class CountingModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone, self.feature_dim, self.normalization = build_backbone(config.backbone, config.pretrained, config.weights,
                                                                             config.features)
        self.head = build_head(config.head, self.feature_dim, config.n_classes, config.dropout, config.features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        return self.head.probs(self(images).float())

    def loss(self, out, target, label_smoothing: float = 0.0, class_weights=None) -> torch.Tensor:
        return self.head.loss(out, target, label_smoothing, class_weights)

    @property
    def decode(self) -> str:
        return self.config.decoding


class CountingEnsemble(nn.Module):
    """Several counting models over one label space whose probabilities are averaged (e.g. the models of K folds).

    Members trained on one frozen backbone share it (`shared_backbone`): one backbone pass, a head per member.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        member = replace(config, members=1, shared_backbone=False)
        if config.shared_backbone:
            self.backbone, self.feature_dim, self.normalization = build_backbone(config.backbone, config.pretrained, config.weights,
                                                                                 config.features)
            self.heads = nn.ModuleList(build_head(config.head, self.feature_dim, config.n_classes, config.dropout, config.features)
                                       for _ in range(config.members))
        else:
            self.members = nn.ModuleList(CountingModel(member) for _ in range(config.members))
            self.normalization = self.members[0].normalization

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        if self.config.shared_backbone:
            features = self.backbone(images)
            return torch.stack([head.probs(head(features).float()) for head in self.heads]).mean(0)
        return torch.stack([member.probs(images) for member in self.members]).mean(0)

    @property
    def decode(self) -> str:
        return self.config.decoding

    @classmethod
    def of(cls, models: Sequence[CountingModel]) -> "CountingEnsemble":
        """The ensemble of trained models (same backbone, head and label space); one shared backbone when their weights are equal."""
        configs = [replace(m.config, pretrained=False, weights=None) for m in models]
        if any(c != configs[0] for c in configs):
            raise ConfigError("ensemble members must have the same backbone, features, head and label space")
        shared = len({fingerprint(m.backbone) for m in models}) == 1
        config = replace(configs[0], members=len(models), shared_backbone=shared)
        ensemble = cls(config)
        if shared:
            ensemble.backbone.load_state_dict(models[0].backbone.state_dict())
            for head, model in zip(ensemble.heads, models):
                head.load_state_dict(model.head.state_dict())
        else:
            for member, model in zip(ensemble.members, models):
                member.load_state_dict(model.state_dict())
        return ensemble.eval()


def build_model(config: ModelConfig) -> nn.Module:
    """A CountingModel, or a CountingEnsemble when the config has several members."""
    return CountingEnsemble(config) if config.members > 1 else CountingModel(config)


def average_views(head: nn.Module, views: Sequence[torch.Tensor]) -> torch.Tensor:
    """Probabilities of each count, averaged over the backbone features of a photo's views (the photo, its mirror image)."""
    return torch.stack([head.probs(head(features).float()) for features in views]).mean(0)


class ProbabilityModel(nn.Module):
    """The one probability path: photos [B, 3, H, W] -> probabilities [B, n_classes].

    With test-time augmentation, the prediction is averaged with the mirrored photo's. Training's
    validation, evaluate, predict, the ONNX export (this module is what is exported) and the server
    all compute probabilities this way; frozen-mode validation applies `average_views` to the same
    two views' cached features. The model is a CountingModel or a CountingEnsemble.
    """

    def __init__(self, model: nn.Module, tta: bool = True):
        super().__init__()
        self.model, self.tta = model, tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.tta:
            return self.model.probs(images)
        # one backbone pass over both views (in eval mode each photo is computed on its own, so this equals two passes;
        # an ONNX export then holds each weight once, which int8 quantisation needs)
        n = images.shape[0]
        probs = self.model.probs(torch.cat([images, torch.flip(images, dims=[-1])]))
        return torch.stack([probs[:n], probs[n:]]).mean(0)  # slices, not chunk(): the ONNX batch stays dynamic


class CachedViewProbs(nn.Module):
    """`ProbabilityModel` for frozen-mode validation: the same averaging over cached view features [B, V, D]."""

    def __init__(self, head: nn.Module, tta: bool = True):
        super().__init__()
        self.head, self.tta = head, tta

    def forward(self, views: torch.Tensor) -> torch.Tensor:
        return average_views(self.head, views.unbind(1) if self.tta else [views[:, 0]])


def fingerprint(module: nn.Module) -> str:
    """A digest of a module's actual weights and buffers (two randomly initialised backbones differ)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()[:24]


def weights_problem(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]) -> str:
    """Why `given` cannot be loaded into a model whose state_dict is `expected` ('' when it can)."""
    wrong = [k for k in expected if k in given and given[k].shape != expected[k].shape]
    missing = [k for k in expected if k not in given]
    extra = [k for k in given if k not in expected]
    if wrong:
        k = wrong[0]
        return f"{k} has shape {list(given[k].shape)}, the model needs {list(expected[k].shape)}"
    if missing:
        return f"{len(missing)} weight(s) missing, such as {missing[0]}"
    if extra:
        return f"{len(extra)} weight(s) the model does not have, such as {extra[0]}"
    return ""
