"""`Prediction`: what a model says about N photos, as arrays, and the views each consumer reads.

Raw and calibrated probabilities travel together: the class of each photo is decoded from the network's
own probabilities (a temperature calibrates the probabilities, never the count: a median or mean decoding
would move with it), while confidences, expected counts and the reported probabilities are calibrated.

Views: `rows()` (REST, SageMaker, `bintally predict`: rounded JSON), `tensors()` (OIP v2 outputs, never
rounded), `class_probabilities()` (stored audit scores), `with_overflow_class()` (evaluation frames) and
`probability_of()` (P(count == record), the audit's p_record).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bintally.inference.temperature import apply_temperature
from bintally.labels import LabelSpace

OUTPUTS = {"count": "INT64", "probabilities": "FP32", "label": "BYTES", "confidence": "FP32", "expected_count": "FP32"}
ROW_DIGITS = {"probabilities": 4, "confidence": 4, "expected_count": 3}  # the rounding of `rows()`


@dataclass(frozen=True)
class Prediction:
    space: LabelSpace
    decoding: str  # how `classes` were decoded from `raw` (LabelSpace.decode)
    raw: np.ndarray  # [N, n_classes] the network's own probabilities
    probabilities: np.ndarray  # [N, n_classes] calibrated: `raw` at the model's temperature (the same array at 1)
    classes: np.ndarray  # [N] the class index of each photo, decoded from `raw`

    @classmethod
    def of(cls, space: LabelSpace, raw: np.ndarray, decoding: str = "argmax", temperature: float = 1.0) -> "Prediction":
        """The prediction of network probabilities `raw` [N, n_classes], calibrated at `temperature`."""
        raw = np.asarray(raw)
        return cls(space, decoding, raw, apply_temperature(raw, temperature), space.decode(raw, decoding))

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def counts(self) -> np.ndarray:
        """The count of each photo (the overflow class as max_count + 1)."""
        return self.space.count_of(self.classes)

    @property
    def labels(self) -> list[str]:
        """The class name of each photo ("3", "6+")."""
        names = self.space.names
        return [names[c] for c in self.classes]

    @property
    def confidences(self) -> np.ndarray:
        """The calibrated probability of each photo's class, float64."""
        return np.asarray(self.probabilities, dtype=np.float64)[np.arange(len(self)), self.classes]

    @property
    def expected_counts(self) -> np.ndarray:
        """The mean count of each photo's calibrated distribution, float64."""
        return self.space.expected_counts(self.probabilities)

    def probability_of(self, counts) -> np.ndarray:
        """The calibrated P(count) of each photo for one count per photo; 0 where the label space has no class for it."""
        return self.space.probability_of(self.probabilities, counts)

    def class_probabilities(self, digits: int = ROW_DIGITS["probabilities"]) -> list[dict[str, float]]:
        """{class name: calibrated probability} per photo, rounded."""
        names = self.space.names
        return [{n: round(float(p), digits) for n, p in zip(names, row)} for row in self.probabilities]

    def rows(self) -> list[dict]:
        """The JSON result of each photo: count, label, confidence, expected count and every class's probability (rounded)."""
        return [{"count": int(count), "label": label, "confidence": round(float(confidence), ROW_DIGITS["confidence"]),
                 "expected_count": round(float(expected), ROW_DIGITS["expected_count"]), "probabilities": probabilities}
                for count, label, confidence, expected, probabilities
                in zip(self.counts, self.labels, self.confidences, self.expected_counts, self.class_probabilities())]

    def tensors(self) -> dict[str, np.ndarray | list[bytes]]:
        """The OIP v2 outputs (datatypes in OUTPUTS), straight from the arrays: never rounded."""
        return {"count": self.counts.astype(np.int64),
                "probabilities": np.asarray(self.probabilities, dtype=np.float32).reshape(len(self), self.space.n_classes),
                "label": [label.encode() for label in self.labels],
                "confidence": self.confidences.astype(np.float32),
                "expected_count": self.expected_counts.astype(np.float32)}

    def with_overflow_class(self) -> "Prediction":
        """The same prediction in the label space with an overflow class, so that photos above max_count can be scored:
        a model without one gives that class probability 0 (and never predicts it)."""
        if self.space.overflow:
            return self
        pad = ((0, 0), (0, 1))
        return Prediction(self.space.with_overflow(), self.decoding, np.pad(self.raw, pad), np.pad(self.probabilities, pad), self.classes)
