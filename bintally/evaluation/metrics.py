"""Count metrics. The overflow class is worth N+1 items; on the 0-N subset predicting it is wrong."""

from __future__ import annotations

import numpy as np


def subset_metrics(true: np.ndarray, pred: np.ndarray, mask: np.ndarray, suffix: str) -> dict:
    n = int(mask.sum())
    if n == 0:
        return {f"n{suffix}": 0, f"accuracy{suffix}": float("nan"), f"rmse{suffix}": float("nan"), f"mae{suffix}": float("nan")}
    t, p = true[mask].astype(float), pred[mask].astype(float)
    return {
        f"n{suffix}": n,
        f"accuracy{suffix}": float((t == p).mean()),
        f"rmse{suffix}": float(np.sqrt(((t - p) ** 2).mean())),
        f"mae{suffix}": float(np.abs(t - p).mean()),
    }


def count_metrics(true_labels, pred_labels, max_count: int = 5) -> dict:
    """Accuracy, RMSE and MAE over all photos, counts 0..max_count and 1..max_count.

    Labels are class indices: 0..max_count are counts, max_count+1 is "more than max_count"
    and is scored as max_count+1 items.
    """
    true, pred = np.asarray(true_labels), np.asarray(pred_labels)
    metrics = subset_metrics(true, pred, np.ones(len(true), bool), "")
    metrics |= subset_metrics(true, pred, true <= max_count, f"_0_{max_count}")
    metrics |= subset_metrics(true, pred, (true >= 1) & (true <= max_count), f"_1_{max_count}")
    return metrics
