"""How likely a bin's record is wrong, from the model's (calibrated) distribution over counts and the record itself.

`score_bins` is what a run calls. Its rankers (`--score`):
- `auto` (the default) and `record`: the record-aware scorer (bintally.audit.record_scorer), P(record wrong) from the
  photo and the record: its `lines` variant for a bin whose record has SKU lines, its `totals` variant for a bin of a
  totals-only source, both probabilities of a wrong record on one scale. `auto` is the name to keep in scripts: it
  stands for the best ranker bintally has for a source, today the record-aware scorer for every bin.
- `mismatch` and `distance`, from the photo and the record's total only:

p_record = P(count == record): a record above the largest count class falls in the overflow class ("6+");
a record the label space has no class for (below min_count, or above max_count without an overflow class)
gets p_record = 0, since the model gives it no probability. The discrepancy score is 1 - p_record ("mismatch")
or, with `--score distance`, the expected number of items between the record and the count,
sum_k P(k) |k - min(record, max_count + 1)|, which also says how far off a record looks (docs/benchmarks.md,
"Audit", compares them).
"""

from __future__ import annotations

import numpy as np

from bintally.audit.explain import explain
from bintally.audit.record_scorer import BinConstants, CountDistribution, RecordScorer, default_scorer
from bintally.inference.prediction import Prediction
from bintally.labels import LabelSpace

SCORES = ("auto", "mismatch", "distance")
PROBABILITY_SCORES = ("auto", "mismatch")  # scores that are probabilities (a --threshold from 0 to 1)


def expected_distance(space: LabelSpace, probs: np.ndarray, records) -> np.ndarray:
    """sum_k P(k) |k - record| in items, the overflow class and records above it counted as max_count + 1."""
    counts = space.count_of(np.arange(space.n_classes))
    records = np.minimum(np.asarray(records, dtype=float), space.max_count + 1)
    return (np.asarray(probs, dtype=np.float64) * np.abs(counts[None, :] - records[:, None])).sum(-1)


def discrepancy_scores(prediction: Prediction, records, score: str = "mismatch") -> dict[str, np.ndarray]:
    """Per bin: p_record, score (1 - p_record, or the expected distance), predicted count (as the model decodes it)
    and expected count."""
    if score not in ("mismatch", "distance"):
        raise ValueError(f"unknown score {score!r}")
    p_record = prediction.probability_of(records)
    ranking = 1.0 - p_record if score == "mismatch" else expected_distance(prediction.space, prediction.probabilities, records)
    return {"p_record": p_record, "score": ranking, "predicted": prediction.counts, "expected": prediction.expected_counts}


def p_record_of(probabilities: dict[str, float], record: int) -> float:
    """P(count == record) from a stored {class name: probability} (a task's probabilities)."""
    space = LabelSpace.from_names(list(probabilities))
    return float(space.probability_of([list(probabilities.values())], [record])[0])


def score_bins(prediction: Prediction, snapshots, score: str = "auto", scorer: RecordScorer | None = None) -> dict:
    """Per snapshot: p_record, score (higher: more likely wrong), predicted count, expected count and an explanation
    (one line for a reviewer, never for a blind counter). `scorer`: a RecordScorer (default: the shipped one)."""
    if score not in SCORES:
        raise ValueError(f"unknown score {score!r}")
    totals = np.array([s.record_qty for s in snapshots], dtype=np.int64)
    records = [tuple(s.lines) for s in snapshots]
    dist = CountDistribution.of(prediction.space, prediction.probabilities)
    if score == "auto":
        scorer = scorer or default_scorer()
        out = discrepancy_scores(prediction, totals) | {"score": record_scores(scorer, dist, records, totals)}
    else:
        out = discrepancy_scores(prediction, totals, score)
    constants = scorer.constants if scorer else BinConstants()
    return out | {"explanation": explain(dist, records, totals, out["predicted"], constants)}


def record_scores(scorer: RecordScorer, dist: CountDistribution, records: list[tuple], totals: np.ndarray) -> np.ndarray:
    """P(record wrong): the `lines` variant where a record has lines, the `totals` variant where the source has none."""
    with_lines = np.array([bool(r) for r in records], dtype=bool)
    scores = np.zeros(len(records))
    for variant, rows in (("lines", np.flatnonzero(with_lines)), ("totals", np.flatnonzero(~with_lines))):
        if len(rows):
            part = CountDistribution(dist.space, dist.probs[rows])
            scores[rows] = scorer.score(variant, part, [records[i] for i in rows], totals[rows])
    return scores
