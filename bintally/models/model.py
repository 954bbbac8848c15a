"""The counting model: backbone + head over the label space counts 0..N plus "more than N"."""

from __future__ import annotations

from dataclasses import asdict

import torch
from torch import nn

from bintally.errors import ConfigError
from bintally.models.backbones import build_backbone
from bintally.models.config import DECODINGS, ModelConfig
from bintally.models.heads import build_head


class CountingModel(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.backbone, self.feature_dim, self.normalization = build_backbone(config.backbone, config.pretrained, config.weights)
        self.head = build_head(config.head, self.feature_dim, config.n_classes, config.dropout)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def probs(self, out: torch.Tensor) -> torch.Tensor:
        return self.head.probs(out)

    def loss(self, out, target, label_smoothing: float = 0.0, class_weights=None) -> torch.Tensor:
        return self.head.loss(out, target, label_smoothing, class_weights)

    @property
    def decode(self) -> str:
        if self.config.decode == "auto":
            return "median" if self.config.head == "ordinal" else "argmax"
        return self.config.decode

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Probability of each count, the predicted count and the expected count (overflow counted as N+1)."""
        return describe_probs(self.probs(self(images)), self.decode)

    def export_config(self) -> dict:
        return asdict(self.config)


def decode_counts(probs: torch.Tensor, decode: str = "argmax") -> torch.Tensor:
    """Class per row: the most likely, the median of the distribution, or the rounded expected count."""
    if decode == "argmax":
        return probs.argmax(-1)
    if decode == "median":
        return (probs.cumsum(-1) < 0.5).sum(-1).clamp_max(probs.shape[-1] - 1)
    if decode == "expected":
        values = torch.arange(probs.shape[-1], dtype=probs.dtype, device=probs.device)
        return (probs * values).sum(-1).round().long()
    raise ConfigError(f"unknown decoding {decode!r}: use one of {', '.join(DECODINGS)}")


def describe_probs(probs: torch.Tensor, decode: str = "argmax") -> dict[str, torch.Tensor]:
    values = torch.arange(probs.shape[-1], dtype=probs.dtype, device=probs.device)
    count = decode_counts(probs, decode)
    return {"probs": probs, "count": count, "confidence": probs.gather(-1, count[:, None])[:, 0],
            "expected_count": (probs * values).sum(-1)}


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
