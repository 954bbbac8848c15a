"""Count metrics. The overflow class is worth N+1 items; on the 0-N subset predicting it is wrong.

The summary metrics take counts: predictions as `LabelSpace.count_of` of the class indices (the overflow
class, "more than max_count", is max_count+1 items) and, where known, the photos' real counts (evaluation
passes them: a bin of 40 predicted "21+" is an error of 19). Every summary metric is given over all
photos, over the counts 0..N and 1..N, always over 0..5 and 1..5 (the published results) and over the
counts above 5 when there are such photos. Per-class metrics, the confusion matrix and calibration take
class indices.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

SUMMARY = ("accuracy", "rmse", "mae", "within1", "rel_error")
MAX_RESAMPLES = 100_000  # far past where a 95% interval stops moving; more only costs time
DRAWS_PER_CHUNK = 4_000_000  # photo indices drawn at once (32 MB), whatever the resamples and photos


def summary_metrics(t: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Accuracy, RMSE, MAE, within-one accuracy and relative error (mean |error| / max(true, 1));
    t and p may be [n] or [resamples, n]."""
    error = p.astype(float) - t.astype(float)
    return {
        "accuracy": (error == 0).mean(-1),
        "rmse": np.sqrt((error**2).mean(-1)),
        "mae": np.abs(error).mean(-1),
        "within1": (np.abs(error) <= 1).mean(-1),
        "rel_error": (np.abs(error) / np.maximum(t.astype(float), 1)).mean(-1),
    }


PUBLISHED_MAX = 5  # the published results and the capstones score counts 0-5 and 1-5
ABOVE_PUBLISHED = f"_{PUBLISHED_MAX + 1}_up"  # the key suffix of the counts above 5


def subsets(true: np.ndarray, max_count: int) -> dict[str, np.ndarray]:
    """Key suffix -> mask over true counts: all photos, counts 0..N and 1..N, always 0..5 and 1..5, and the counts
    above 5 when there are any."""
    true = np.asarray(true)
    masks = {"": np.ones(len(true), bool)}
    for n in dict.fromkeys((max_count, PUBLISHED_MAX)):
        masks |= {f"_0_{n}": true <= n, f"_1_{n}": (true >= 1) & (true <= n)}
    above = true > PUBLISHED_MAX
    return masks | ({ABOVE_PUBLISHED: above} if above.any() else {})


def count_metrics(true_labels, pred_labels, max_count: int = 5) -> dict:
    """n, accuracy, rmse, mae, within1 and rel_error over all photos, counts 0..N and 1..N, counts 0..5 and 1..5,
    and counts above 5 (suffix _6_up) when there are such photos."""
    true, pred = np.asarray(true_labels), np.asarray(pred_labels)
    metrics = {}
    for suffix, mask in subsets(true, max_count).items():
        metrics[f"n{suffix}"] = int(mask.sum())
        values = summary_metrics(true[mask], pred[mask]) if mask.any() else dict.fromkeys(SUMMARY, np.nan)
        metrics |= {f"{k}{suffix}": float(v) for k, v in values.items()}
    return metrics


def check_resamples(resamples) -> None:
    """A bootstrap size that can be computed: a whole number from 1 to MAX_RESAMPLES (ConfigError naming --bootstrap)."""
    from bintally.settings import check_range

    check_range("resamples (--bootstrap)", resamples, whole=True)
    check_range("resamples (--bootstrap)", int(resamples), 1, MAX_RESAMPLES)


def bootstrap_intervals(true_labels, pred_labels, max_count: int = 5, resamples: int = 1000,
                        level: float = 0.95, seed: int = 0) -> dict[str, list[float]]:
    """Percentile bootstrap confidence interval of each summary metric, resampling photos within each subset."""
    check_resamples(resamples)
    true, pred = np.asarray(true_labels), np.asarray(pred_labels)
    rng = np.random.default_rng(seed)
    tail = (1 - level) / 2 * 100
    intervals = {}
    for suffix, mask in subsets(true, max_count).items():
        t, p = true[mask], pred[mask]
        if len(t) == 0:
            continue
        chunk = max(1, DRAWS_PER_CHUNK // len(t))  # memory stays bounded (one chunk, as before, in the usual case)
        parts = []
        for start in range(0, resamples, chunk):
            draws = rng.integers(0, len(t), size=(min(chunk, resamples - start), len(t)))
            parts.append(summary_metrics(t[draws], p[draws]))
        for name in parts[0]:
            values = np.concatenate([np.atleast_1d(part[name]) for part in parts])
            intervals[f"{name}{suffix}"] = [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]
    return intervals


def per_class_metrics(true_labels, pred_labels, classes: list[str]) -> list[dict]:
    """Precision, recall, F1, one-vs-rest accuracy and mean absolute error of each true class."""
    true, pred = np.asarray(true_labels), np.asarray(pred_labels)
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(true, pred, labels=labels, zero_division=0)
    rows = []
    for c, name in enumerate(classes):
        in_class = true == c
        rows.append({"class": name, "n": int(support[c]), "predicted": int((pred == c).sum()),
                     "precision": float(precision[c]), "recall": float(recall[c]), "f1": float(f1[c]),
                     "accuracy": float(((pred == c) == in_class).mean()) if len(true) else float("nan"),
                     "mae": float(np.abs(pred[in_class] - c).mean()) if in_class.any() else float("nan")})
    return rows


def confusion(true_labels, pred_labels, n_classes: int) -> list[list[int]]:
    """Rows are true classes, columns predicted classes."""
    return confusion_matrix(true_labels, pred_labels, labels=list(range(n_classes))).tolist()


def calibration(probs: np.ndarray, true_labels, pred_labels, bins: int = 10) -> dict:
    """Expected calibration error of the reported confidence (the probability of the predicted class)."""
    true, pred = np.asarray(true_labels), np.asarray(pred_labels)
    confidence = np.asarray(probs)[np.arange(len(pred)), pred]
    correct = (pred == true).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        row = {"low": float(edges[b]), "high": float(edges[b + 1]), "n": n,
               "confidence": float(confidence[inside].mean()) if n else None,
               "accuracy": float(correct[inside].mean()) if n else None}
        if n:
            ece += n / len(pred) * abs(row["accuracy"] - row["confidence"])
        rows.append(row)
    return {"ece": float(ece), "bins": rows}
