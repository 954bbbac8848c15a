"""What a counting model is, without building it (no torch import): settings, heads, decodings.

Each setting states its help, choices and range once; `bintally train` offers them as options (its config holds a `ModelConfig`).
"""

from __future__ import annotations

from dataclasses import dataclass

from bintally.labels import DECODINGS, OVERFLOW_WORDS, LabelSpace
from bintally.settings import setting

HEADS = ("linear", "mlp", "ordinal", "hurdle")  # hurdle: counts 0-5 and above 5 as two ordinal heads under a gate
# what the head reads: the backbone's pooled final features, or its stride-16 feature map through a small conv head
FEATURES = ("pooled", "stride16")


@dataclass
class ModelConfig:
    backbone: str = setting("efficientnet_lite0", help="efficientnet_lite0/1/2, resnet18/34/50/101 or any timm model name.")
    head: str = setting("ordinal", choices=HEADS, help="Head on the backbone's features.")
    features: str = setting("pooled", choices=FEATURES, help="What the head reads: pooled final features, "
                                                             "or the stride-16 map through a small conv head.")
    # the label space: class i is the count min_count + i; a training run that leaves these unset takes its manifest's
    min_count: int = setting(0, low=0, default_in_help=True,
                             help="Smallest count with its own class (default: the manifest's split, else 0).")
    max_count: int = setting(5, low=0, default_in_help=True,
                             help="Largest count with its own class (default: the manifest's split, else 5).")
    overflow: bool = setting(True, words=OVERFLOW_WORDS, default_in_help=True,  # without it the model only knows min..max_count
                             help="class: counts above max-count form one class; exclude: learn counts min..max only.")
    pretrained: bool = setting(True, flag=("--pretrained/--random-init",), help="Start from shipped ImageNet weights.")
    weights: str | None = setting(None, help="Backbone weights file (.pt/.pth state dict).")  # a user's backbone weights
    dropout: float = setting(0.2, low=0, high=1, high_open=True, help="Dropout before the head's layers.")
    decode: str = setting("auto", choices=("auto", *DECODINGS), help="Count from probabilities (auto: median for ordinal, hurdle for hurdle, else argmax).")
    members: int = setting(1, low=1, cli=False)  # an ensemble of this many models, whose probabilities are averaged
    shared_backbone: bool = setting(False, cli=False)  # ensemble members share one (frozen) backbone and differ only in their heads

    @property
    def decoding(self) -> str:
        if self.decode == "auto":
            return {"ordinal": "median", "hurdle": "hurdle"}.get(self.head, "argmax")
        return self.decode

    @property
    def labels(self) -> LabelSpace:
        return LabelSpace(self.min_count, self.max_count, self.overflow)

    @property
    def n_classes(self) -> int:
        return self.labels.n_classes
