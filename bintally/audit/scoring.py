"""How likely a bin's record is wrong, from the model's (calibrated) distribution over counts.

p_record = P(count == record): a record above the largest count class falls in the overflow class ("6+");
a record the label space has no class for (below min_count, or above max_count without an overflow class)
gets p_record = 0, since the model gives it no probability. The discrepancy score is 1 - p_record ("mismatch",
the default) or, with `--score distance`, the expected number of items between the record and the count,
sum_k P(k) |k - min(record, max_count + 1)|, which also says how far off a record looks (docs/benchmarks.md,
"Audit", compares them).
"""

from __future__ import annotations

import numpy as np

from bintally.labels import LabelSpace

SCORES = ("mismatch", "distance")


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


def expected_distance(space: LabelSpace, probs: np.ndarray, records) -> np.ndarray:
    """sum_k P(k) |k - record| in items, the overflow class and records above it counted as max_count + 1."""
    counts = space.count_of(np.arange(space.n_classes))
    records = np.minimum(np.asarray(records, dtype=float), space.max_count + 1)
    return (np.asarray(probs, dtype=np.float64) * np.abs(counts[None, :] - records[:, None])).sum(-1)


def discrepancy_scores(space: LabelSpace, probs: np.ndarray, records, predicted_labels: np.ndarray | None = None,
                       score: str = "mismatch") -> dict[str, np.ndarray]:
    """Per bin: p_record, score (1 - p_record, or the expected distance), predicted count (`predicted_labels`, as the
    model decodes them; else the most likely class) and expected count."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}")
    p_record = record_probability(space, probs, records)
    labels = np.asarray(probs).argmax(-1) if predicted_labels is None else predicted_labels
    ranking = 1.0 - p_record if score == "mismatch" else expected_distance(space, probs, records)
    return {"p_record": p_record, "score": ranking, "predicted": space.count_of(labels), "expected": space.expected_counts(probs)}


def p_record_of(probabilities: dict[str, float], record: int) -> float:
    """P(count == record) from a stored {class name: probability} (a task's probabilities)."""
    names = list(probabilities)
    space = LabelSpace.from_names(names)
    index = int(record_classes(space, [record])[0])
    return float(probabilities[names[index]]) if index >= 0 else 0.0
