"""Saved predictions: one row per photo, enough to recompute every metric without the model.

Columns: id, path, true_count (the photo's real count), true_label and predicted_label (class
indices; class i is the count min_count + i, the last class is "more than N"; the metrics score against
true_count where a file has it, else against true_label's count), predicted_count
(the class as a count, N+1 meaning "N+1 or more"), confidence, expected_count, and prob_<class>
for every class in order. A file read back is checked row by row: a bad value is a DataError
naming the file, the column and the first bad row.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype, is_string_dtype

from bintally.errors import ConfigError, DataError
from bintally.inference.prediction import Prediction
from bintally.io import atomic_path, spreadsheet_original, write_frame_csv
from bintally.labels import LabelSpace

REQUIRED = ["id", "true_label", "predicted_label"]
PROB_PREFIX = "prob_"
SUFFIXES = (".csv", ".parquet")
ROUNDING = 1e-6  # probabilities this far outside [0, 1] are rounding, not a bad file


def predictions_frame(photos: pd.DataFrame, prediction: Prediction) -> pd.DataFrame:
    """One row per photo of `photos` (id, path, count, label) with its prediction, in the same order."""
    probs = prediction.probabilities.astype(np.float64)  # so that a CSV round trip gives back the same numbers
    frame = pd.DataFrame({
        "id": photos["id"].astype(str).to_numpy(),
        "path": photos["path"].astype(str).to_numpy(),
        "true_count": photos["count"].astype(int).to_numpy(),
        "true_label": photos["label"].astype(int).to_numpy(),
        "predicted_label": prediction.classes.astype(int),
        "predicted_count": prediction.counts,
        "confidence": prediction.confidences,
        "expected_count": prediction.expected_counts,
    })
    for c, name in enumerate(prediction.space.names):
        frame[f"{PROB_PREFIX}{name}"] = probs[:, c]
    return frame


def prediction_classes(frame: pd.DataFrame) -> list[str]:
    return [c[len(PROB_PREFIX):] for c in frame.columns if c.startswith(PROB_PREFIX)]


def prediction_probs(frame: pd.DataFrame) -> np.ndarray:
    return frame[[f"{PROB_PREFIX}{c}" for c in prediction_classes(frame)]].to_numpy(dtype=float)


def check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(path, f"unknown file type {path.suffix or '(none)'!r}: predictions are .csv or .parquet")
    return suffix


def save_predictions(frame: pd.DataFrame, path: str | Path) -> Path:
    """CSV (text cells spreadsheet-safe) or Parquet by the file's suffix, written atomically."""
    path = Path(path)
    if check_suffix(path) == ".csv":
        return write_frame_csv(path, frame)
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return path


def load_predictions(path: str | Path) -> pd.DataFrame:
    """A saved predictions file, checked: labels are class indices, probabilities lie in [0, 1]."""
    path = Path(path)
    frame = read_table(path)
    classes = check_columns(path, frame)
    if frame.empty:
        raise DataError(path, "no predictions in the file (only a header)")
    for column in ("true_label", "predicted_label"):
        frame[column] = class_indices(path, frame, column, len(classes))
    if "true_count" in frame:
        frame["true_count"] = real_counts(path, frame, LabelSpace.from_names(classes))
    for name in classes:
        frame[f"{PROB_PREFIX}{name}"] = probabilities(path, frame, f"{PROB_PREFIX}{name}")
    return frame


def read_table(path: Path) -> pd.DataFrame:
    if path.is_dir():
        raise DataError(path, "is a folder, expected a predictions file (.csv or .parquet)")
    if not path.is_file():
        raise DataError(path, "no such predictions file")
    suffix = check_suffix(path)
    if path.stat().st_size == 0:
        raise DataError(path, "empty file, expected saved predictions")
    try:
        frame = pd.read_parquet(path) if suffix == ".parquet" else pd.read_csv(path, dtype={"id": str})
    except Exception as e:  # pyarrow and pandas raise many types for a damaged file
        raise DataError(path, f"cannot read predictions ({e.__class__.__name__}: {' '.join(str(e).split())})") from None
    text = [c for c in frame.columns if suffix == ".csv" and (frame[c].dtype == object or is_string_dtype(frame[c]))]
    return frame.assign(**{c: frame[c].map(spreadsheet_original) for c in text})  # ids and paths as they were saved


def check_columns(path: Path, frame: pd.DataFrame) -> list[str]:
    """The class names of the prob_ columns, which must be one per count of a label space."""
    missing = [c for c in REQUIRED if c not in frame.columns]
    classes = prediction_classes(frame)
    if len(classes) < 2:
        missing.append(f"{PROB_PREFIX}<class> (one per class)")
    if missing:
        raise DataError(path, f"missing columns: {', '.join(missing)}")
    try:
        LabelSpace.from_names(classes)
    except (ConfigError, ValueError):
        raise DataError(path, f"columns {', '.join(PROB_PREFIX + c for c in classes)} are not one per count "
                              f"(such as {PROB_PREFIX}0 ... {PROB_PREFIX}5, {PROB_PREFIX}6+)") from None
    return classes


def row_name(path: Path, i: int) -> str:
    return f"line {i + 2}" if path.suffix.lower() == ".csv" else f"row {i + 1}"  # a CSV's line 1 is its header


def refuse_first(path: Path, frame: pd.DataFrame, column: str, bad: np.ndarray, problem: str) -> None:
    """DataError naming the first row where `bad` holds, if any."""
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        value = frame[column].iloc[i]
        shown = "(empty)" if pd.isna(value) else repr(value.item() if isinstance(value, np.generic) else value)
        raise DataError(path, f"column {column}, {row_name(path, i)}: {shown} {problem}")


def numbers(path: Path, frame: pd.DataFrame, column: str) -> np.ndarray:
    """The column as floats; a DataError at the first value that is not a number (text, true/false, empty, NaN)."""
    values = frame[column]
    if is_bool_dtype(values) or not (is_numeric_dtype(values) or path.suffix.lower() == ".csv"):
        kind = "true/false" if is_bool_dtype(values) else "text" if values.dtype == object or is_string_dtype(values) else values.dtype
        refuse_first(path, frame, column, np.ones(len(values), bool), f"is not a number (the column holds {kind})")
    as_float = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    refuse_first(path, frame, column, np.isnan(as_float), "is not a number")
    return as_float


def class_indices(path: Path, frame: pd.DataFrame, column: str, n_classes: int) -> np.ndarray:
    values = numbers(path, frame, column)
    refuse_first(path, frame, column, ~np.isfinite(values) | (values != np.round(values)), "is not a whole number (a class index)")
    refuse_first(path, frame, column, (values < 0) | (values >= n_classes), f"is not a class index 0..{n_classes - 1}")
    return values.astype(int)


def real_counts(path: Path, frame: pd.DataFrame, space: LabelSpace) -> np.ndarray:
    """Column true_count: whole numbers from 0, each in its row's true_label class (the metrics score against it)."""
    values = numbers(path, frame, "true_count")
    refuse_first(path, frame, "true_count", ~np.isfinite(values) | (values != np.round(values)) | (values < 0),
                 "is not a count (a whole number from 0)")
    counts = values.astype(np.int64)
    refuse_first(path, frame, "true_count", space.class_of(counts) != frame["true_label"].to_numpy(),
                 "does not match the row's true_label")
    return counts


def probabilities(path: Path, frame: pd.DataFrame, column: str) -> np.ndarray:
    values = numbers(path, frame, column)
    refuse_first(path, frame, column, ~((values >= -ROUNDING) & (values <= 1 + ROUNDING)), "is not a probability between 0 and 1")
    return values
