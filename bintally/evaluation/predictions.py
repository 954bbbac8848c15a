"""Saved predictions: one row per photo, enough to recompute every metric without the model.

Columns: id, path, true_count (the photo's real count), true_label and predicted_label (class
indices; the last class is "more than N"), predicted_count (the class as a count, N+1 meaning
"N+1 or more"), confidence, expected_count, and prob_<class> for every class in order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bintally.errors import DataError
from bintally.io import atomic_path

REQUIRED = ["id", "true_label", "predicted_label"]
PROB_PREFIX = "prob_"


def predictions_frame(photos: pd.DataFrame, probs: np.ndarray, predicted: np.ndarray, classes: list[str]) -> pd.DataFrame:
    probs = probs.astype(np.float64)  # so that a CSV round trip gives back the same numbers
    values = np.arange(len(classes))
    frame = pd.DataFrame({
        "id": photos["id"].astype(str).to_numpy(),
        "path": photos["path"].astype(str).to_numpy(),
        "true_count": photos["count"].astype(int).to_numpy(),
        "true_label": photos["label"].astype(int).to_numpy(),
        "predicted_label": predicted.astype(int),
        "predicted_count": predicted.astype(int),
        "confidence": probs[np.arange(len(predicted)), predicted],
        "expected_count": probs @ values,
    })
    for c, name in enumerate(classes):
        frame[f"{PROB_PREFIX}{name}"] = probs[:, c]
    return frame


def prediction_classes(frame: pd.DataFrame) -> list[str]:
    return [c[len(PROB_PREFIX):] for c in frame.columns if c.startswith(PROB_PREFIX)]


def prediction_probs(frame: pd.DataFrame) -> np.ndarray:
    return frame[[f"{PROB_PREFIX}{c}" for c in prediction_classes(frame)]].to_numpy(dtype=float)


def save_predictions(frame: pd.DataFrame, path: str | Path) -> Path:
    """CSV or Parquet by the file's suffix, written atomically."""
    path = Path(path)
    if path.suffix not in (".csv", ".parquet"):
        raise DataError(path, "predictions file must end in .csv or .parquet")
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False) if path.suffix == ".parquet" else frame.to_csv(tmp, index=False)
    return path


def load_predictions(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "no such predictions file")
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path, dtype={"id": str})
    except Exception as e:  # pyarrow and pandas raise many types for a damaged file
        raise DataError(path, f"cannot read predictions ({e.__class__.__name__}: {e})") from None
    missing = [c for c in REQUIRED if c not in frame.columns]
    classes = prediction_classes(frame)
    if len(classes) < 2:
        missing.append(f"{PROB_PREFIX}<class> (one per class)")
    if missing:
        raise DataError(path, f"missing columns: {', '.join(missing)}")
    if frame.empty:
        raise DataError(path, "no predictions in the file")
    labels = frame[["true_label", "predicted_label"]]
    if labels.isna().any().any() or not ((labels >= 0) & (labels < len(classes))).all().all():
        raise DataError(path, f"true_label and predicted_label must be class indices 0..{len(classes) - 1}")
    return frame
