"""What a counting model is, without building it (no torch import): settings, heads, decodings."""

from __future__ import annotations

from dataclasses import dataclass

from bintally.labels import LabelSpace

HEADS = ("linear", "mlp", "ordinal")


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"
    head: str = "ordinal"
    max_count: int = 5
    min_count: int = 0  # class i is the count min_count + i
    pretrained: bool = True
    weights: str | None = None  # a user's backbone weights file
    dropout: float = 0.2
    decode: str = "auto"  # argmax | median | expected (rounded); auto: median for ordinal, else argmax
    overflow: bool = True  # a last class for "more than max_count"; without it the model only knows 0..max_count

    @property
    def decoding(self) -> str:
        if self.decode == "auto":
            return "median" if self.head == "ordinal" else "argmax"
        return self.decode

    @property
    def labels(self) -> LabelSpace:
        return LabelSpace(self.min_count, self.max_count, self.overflow)

    @property
    def n_classes(self) -> int:
        return self.labels.n_classes
