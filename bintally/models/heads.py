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


class HurdleHead(nn.Module):
    """The whole count range in two parts: counts 0..split (where most bins are) and split+1 .. the overflow class.

    A gate gives P(count > split); each part is its own cumulative ordinal head, trained only on the photos whose
    count falls in it, so the many large-count photos do not pull the small counts' cut points. Probabilities:
    (1 - gate) * P_low(k) for k <= split, gate * P_high(k) above. Outputs: the low head's, the gate's logit, the high head's.
    """

    gate_weight = 1.0  # the gate's loss against the parts' (each a sum over its cut points)

    def __init__(self, dim: int, n_classes: int, dropout: float = 0.2, split: int = 5):
        super().__init__()
        if not 1 <= split < n_classes - 2:
            raise ConfigError(f"the hurdle head needs classes beyond {split} + 1 (it has {n_classes}): raise --max-count")
        self.split, self.n_classes = split, n_classes
        self.low = OrdinalHead(dim, split + 1, dropout)
        self.high = OrdinalHead(dim, n_classes - split - 1, dropout)
        self.gate = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.low(features), self.gate(features), self.high(features)], -1)

    def parts(self, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return out[..., :self.split], out[..., self.split], out[..., self.split + 1:]

    def probs(self, out: torch.Tensor) -> torch.Tensor:
        low, gate, high = self.parts(out)
        above = torch.sigmoid(gate)[..., None]
        return torch.cat([(1 - above) * self.low.probs(low), above * self.high.probs(high)], -1)

    def loss(self, out, target, label_smoothing: float = 0.0, class_weights=None) -> torch.Tensor:
        low, gate, high = self.parts(out)
        is_high = target > self.split
        loss = self.gate_weight * F.binary_cross_entropy_with_logits(gate, is_high.float())
        if (~is_high).any():
            loss = loss + self.low.loss(low[~is_high], target[~is_high], label_smoothing) * (~is_high).float().mean()
        if is_high.any():
            loss = loss + self.high.loss(high[is_high], target[is_high] - self.split - 1, label_smoothing) * is_high.float().mean()
        return loss


class SpatialHead(nn.Module):
    """A small conv net over a stride-16 feature map [B, C, H, W], mean- and max-pooled into an output head.

    Counting needs where things are: pooling the backbone's last map first loses what this keeps.
    `probs` and `loss` are the output head's.
    """

    def __init__(self, channels: int, output, width: int = 128):
        super().__init__()
        layers, size = [], channels
        for _ in range(3):
            layers += [nn.Conv2d(size, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            size = width
        self.body = nn.Sequential(*layers)
        self.out = output(2 * width)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        z = self.body(maps)
        return self.out(torch.cat([z.mean((2, 3)), z.amax((2, 3))], 1))

    def probs(self, out: torch.Tensor) -> torch.Tensor:
        return self.out.probs(out)

    def loss(self, out, target, label_smoothing: float = 0.0, class_weights=None) -> torch.Tensor:
        return self.out.loss(out, target, label_smoothing, class_weights)


def build_head(kind: str, dim: int, n_classes: int, dropout: float = 0.2, features: str = "pooled") -> nn.Module:
    """The output head for pooled features of size `dim`, or, for a stride-16 map of `dim` channels, a SpatialHead around it."""
    if features == "stride16":
        return SpatialHead(dim, lambda pooled: build_head(kind, pooled, n_classes, dropout))
    if kind == "linear":
        return ClassHead(dim, n_classes, dropout=dropout)
    if kind == "mlp":
        return ClassHead(dim, n_classes, hidden=512, dropout=dropout)
    if kind == "ordinal":
        return OrdinalHead(dim, n_classes, dropout=dropout)
    if kind == "hurdle":
        return HurdleHead(dim, n_classes, dropout=dropout)
    raise ConfigError(f"unknown head {kind!r}: use one of {', '.join(HEADS)}")
