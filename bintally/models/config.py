"""What a counting model is, without building it (no torch import): settings, heads, decodings."""

from __future__ import annotations

from dataclasses import dataclass

from bintally.labels import LabelSpace

HEADS = ("linear", "mlp", "ordinal")
# what the head reads: the backbone's pooled final features, or its stride-16 feature map through a small conv head
FEATURES = ("pooled", "stride16")


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
    features: str = "pooled"  # pooled | stride16 (the backbone is cut after its last stride-16 stage)
    members: int = 1  # an ensemble of this many models, whose probabilities are averaged
    shared_backbone: bool = False  # ensemble members share one (frozen) backbone and differ only in their heads

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
