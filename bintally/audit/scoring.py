"""How likely a bin's record is wrong, from the model's (calibrated) distribution over counts.

p_record = P(count == record): a record above the largest count class falls in the overflow class ("6+");
a record the label space has no class for (below min_count, or above max_count without an overflow class)
gets p_record = 0, since the model gives it no probability. The discrepancy score is 1 - p_record.
"""

from __future__ import annotations

import numpy as np

from bintally.labels import LabelSpace


def record_classes(space: LabelSpace, records) -> np.ndarray:
    """The class index of each record quantity; -1 where the label space has no class for it."""
    records = np.asarray(records, dtype=int)
    classes = np.minimum(records, space.max_count + 1) - space.min_count
    outside = (records < space.min_count) | ((records > space.max_count) & (not space.overflow))
    return np.where(outside, -1, classes)


def record_probability(space: LabelSpace, probs: np.ndarray, records) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    classes = record_classes(space, records)
    return np.where(classes >= 0, probs[np.arange(len(probs)), np.maximum(classes, 0)], 0.0)


def discrepancy_scores(space: LabelSpace, probs: np.ndarray, records, predicted_labels: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per bin: p_record, score (1 - p_record), predicted count (`predicted_labels`, as the model decodes them; else the
    most likely class) and expected count."""
    p_record = record_probability(space, probs, records)
    labels = np.asarray(probs).argmax(-1) if predicted_labels is None else predicted_labels
    return {"p_record": p_record, "score": 1.0 - p_record, "predicted": space.count_of(labels), "expected": space.expected_counts(probs)}
