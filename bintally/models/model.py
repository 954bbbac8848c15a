"""The counting model (backbone + head over a label space) and the one probability path every stage uses."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch
from torch import nn

from bintally.models.backbones import build_backbone
from bintally.models.config import ModelConfig
from bintally.models.heads import build_head


class CountingModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone, self.feature_dim, self.normalization = build_backbone(config.backbone, config.pretrained, config.weights)
        self.head = build_head(config.head, self.feature_dim, config.n_classes, config.dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def loss(self, out, target, label_smoothing: float = 0.0, class_weights=None) -> torch.Tensor:
        return self.head.loss(out, target, label_smoothing, class_weights)

    @property
    def decode(self) -> str:
        return self.config.decoding


def average_views(head: nn.Module, views: Sequence[torch.Tensor]) -> torch.Tensor:
    """Probabilities of each count, averaged over the backbone features of a photo's views (the photo, its mirror image)."""
    return torch.stack([head.probs(head(features).float()) for features in views]).mean(0)


class ProbabilityModel(nn.Module):
    """The one probability path: photos [B, 3, H, W] -> probabilities [B, n_classes].

    With test-time augmentation, the prediction is averaged with the mirrored photo's. Training's
    validation, evaluate, predict, the ONNX export (this module is what is exported) and the server
    all compute probabilities this way; frozen-mode validation applies `average_views` to the same
    two views' cached features.
    """

    def __init__(self, model: CountingModel, tta: bool = True):
        super().__init__()
        self.model, self.tta = model, tta

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if not self.tta:
            return average_views(self.model.head, [self.model.backbone(images)])
        # one backbone pass over both views (in eval mode each photo is computed on its own, so this equals two passes;
        # an ONNX export then holds each weight once, which int8 quantisation needs)
        n = images.shape[0]
        features = self.model.backbone(torch.cat([images, torch.flip(images, dims=[-1])]))
        return average_views(self.model.head, [features[:n], features[n:]])  # slices, not chunk(): the ONNX batch stays dynamic


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
