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

from bintally.inference.prediction import Prediction
from bintally.labels import LabelSpace

SCORES = ("mismatch", "distance")


def expected_distance(space: LabelSpace, probs: np.ndarray, records) -> np.ndarray:
    """sum_k P(k) |k - record| in items, the overflow class and records above it counted as max_count + 1."""
    counts = space.count_of(np.arange(space.n_classes))
    records = np.minimum(np.asarray(records, dtype=float), space.max_count + 1)
    return (np.asarray(probs, dtype=np.float64) * np.abs(counts[None, :] - records[:, None])).sum(-1)


def discrepancy_scores(prediction: Prediction, records, score: str = "mismatch") -> dict[str, np.ndarray]:
    """Per bin: p_record, score (1 - p_record, or the expected distance), predicted count (as the model decodes it)
    and expected count."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}")
    p_record = prediction.probability_of(records)
    ranking = 1.0 - p_record if score == "mismatch" else expected_distance(prediction.space, prediction.probabilities, records)
    return {"p_record": p_record, "score": ranking, "predicted": prediction.counts, "expected": prediction.expected_counts}


def p_record_of(probabilities: dict[str, float], record: int) -> float:
    """P(count == record) from a stored {class name: probability} (a task's probabilities)."""
    space = LabelSpace.from_names(list(probabilities))
    return float(space.probability_of([list(probabilities.values())], [record])[0])
