"""Heads: map backbone features to a distribution over counts 0..N and the overflow class "N+1+"."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bintally.errors import ConfigError
from bintally.models.config import HEADS


class ClassHead(nn.Module):
    """Softmax over the classes: `linear`, or the seeds' two-layer `mlp`."""

    def __init__(self, dim: int, n_classes: int, hidden: int = 0, dropout: float = 0.2):
        super().__init__()
        layers = [nn.Dropout(dropout)]
        if hidden:
            layers += [nn.Linear(dim, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            dim = hidden
        layers.append(nn.Linear(dim, n_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)

    def probs(self, out: torch.Tensor) -> torch.Tensor:
        return out.softmax(-1)

    def loss(self, out, target, label_smoothing: float = 0.0, class_weights=None) -> torch.Tensor:
        return F.cross_entropy(out, target, weight=class_weights, label_smoothing=label_smoothing)


class OrdinalHead(nn.Module):
    """Cumulative ordinal head: output k is the logit of P(count > k), k = 0 .. n_classes-2."""

    def __init__(self, dim: int, n_classes: int, dropout: float = 0.2):
        super().__init__()
        self.n_classes = n_classes
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, 1)  # one shared score (its bias places the first cut point) ...
        self.gaps = nn.Parameter(torch.full((n_classes - 2,), -0.43))  # ... and softplus gaps (~0.5) to the next ones

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        cuts = torch.cat([self.gaps.new_zeros(1), torch.cumsum(F.softplus(self.gaps), 0)])
        return self.fc(self.drop(features)) - cuts

    def probs(self, out: torch.Tensor) -> torch.Tensor:
        above = torch.sigmoid(out)  # P(count > k), decreasing in k by construction
        ones, zeros = torch.ones_like(above[..., :1]), torch.zeros_like(above[..., :1])
        cumulative = torch.cat([ones, above, zeros], -1)
        return (cumulative[..., :-1] - cumulative[..., 1:]).clamp_min(0)

    def loss(self, out, target, label_smoothing: float = 0.0, class_weights=None) -> torch.Tensor:
        k = torch.arange(self.n_classes - 1, device=out.device)
        above = (target[:, None] > k).float()
        if label_smoothing:  # smooth the class distribution, then take its cumulative form
            above = above * (1 - label_smoothing) + label_smoothing * (self.n_classes - 1 - k) / self.n_classes
        per_sample = F.binary_cross_entropy_with_logits(out, above, reduction="none").sum(-1)
        if class_weights is not None:
            w = class_weights[target]
            return (per_sample * w).sum() / w.sum()
        return per_sample.mean()


def build_head(kind: str, dim: int, n_classes: int, dropout: float = 0.2) -> nn.Module:
    if kind == "linear":
        return ClassHead(dim, n_classes, dropout=dropout)
    if kind == "mlp":
        return ClassHead(dim, n_classes, hidden=512, dropout=dropout)
    if kind == "ordinal":
        return OrdinalHead(dim, n_classes, dropout=dropout)
    raise ConfigError(f"unknown head {kind!r}: use one of {', '.join(HEADS)}")
