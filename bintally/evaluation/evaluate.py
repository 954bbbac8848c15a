"""`bintally evaluate`: score a trained model on photos it has not seen, or recompute from saved predictions."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader
from bintally.progress import progress_bar

from bintally.data.dataset import BinPhotos
from bintally.data.index import read_or_index
from bintally.data.manifest import usable
from bintally.data.split import assign_labels, class_names
from bintally.errors import ConfigError, DataError
from bintally.evaluation.metrics import bootstrap_intervals, calibration, confusion, count_metrics, per_class_metrics, subsets
from bintally.evaluation.predictions import load_predictions, prediction_classes, prediction_probs, predictions_frame, save_predictions
from bintally.models.model import decode_counts
from bintally.predict import Predictor


@dataclass
class Evaluation:
    metrics: dict  # the flat summary (n, accuracy, accuracy_0_5, rmse_0_5, ...) with CIs and tables beside it
    predictions: pd.DataFrame
    classes: list[str]
    info: dict = field(default_factory=dict)

    @property
    def max_count(self) -> int:
        return len(self.classes) - 2

    def to_json(self) -> dict:
        return {**self.metrics, "info": self.info}

    def write_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2, default=nan_to_none))
        return path

    def write_report(self, out: str | Path) -> Path:
        from bintally.evaluation.report import write_report

        return write_report(self, out)


def nan_to_none(value):
    return None if isinstance(value, float) and math.isnan(value) else str(value)


# ---------------------------------------------------------------- the photos


def evaluation_photos(df: pd.DataFrame, split: str | None, max_count: int) -> tuple[pd.DataFrame, dict]:
    """The usable photos of one split (or all photos when the data has no split), labelled for the model."""
    source = df.attrs.get("info", {}).get("source", "<data>")
    split_info = df.attrs.get("info", {}).get("split", {})
    if "split" in df and split_info.get("max_count", max_count) != max_count:
        raise ConfigError(f"the model counts 0..{max_count} and '{max_count + 1}+', but {source} was split with "
                          f"--max-count {split_info['max_count']}; evaluate a model trained with that label space, "
                          f"or re-split the data with --max-count {max_count}")
    info = {"source": source, "photos": len(df)}
    ok = usable(df) & df["count"].notna()
    info["unusable"] = int((~ok).sum())
    df = df[ok]
    info["no_split_column"] = "split" not in df
    if split is not None and "split" in df:
        df = df[df["split"] == split]
        info["split"] = split
    else:
        info["split"] = "all (the data has no split column)" if split is not None else "all"
    if df.empty:
        raise DataError(source, f"no photos to evaluate (split: {info['split']})")
    df = df.assign(label=assign_labels(df["count"], max_count, "class").astype(int)).reset_index(drop=True)
    return df, info


# ---------------------------------------------------------------- the model's predictions


@torch.no_grad()
def predict_probs(predictor: Predictor, photos: pd.DataFrame, batch_size: int = 64, workers: int = 2,
                  progress: bool = True) -> np.ndarray:
    loader = DataLoader(BinPhotos(photos, predictor.transform, train=False), batch_size=batch_size, num_workers=workers,
                        generator=torch.Generator().manual_seed(0))
    probs = [predictor.predict_tensor(x)["probs"] for x, _, _ in progress_bar(loader, desc="predicting", unit="batch", enabled=progress)]
    return torch.cat(probs).numpy()


def evaluate_model(model: str | Path, data: str | Path | None, split: str | None = "test", batch_size: int = 64,
                   workers: int = 2, resamples: int = 1000, progress: bool = True) -> Evaluation:
    """Predict every photo of the split with the trained model and compute every metric."""
    predictor = Predictor.load(model)
    max_count = predictor.model.config.max_count
    photos, info = evaluation_photos(read_or_index(data), split, max_count)
    probs = predict_probs(predictor, photos, batch_size, workers, progress)
    predicted = decode_counts(torch.from_numpy(probs), predictor.model.decode).numpy()
    if not predictor.model.config.overflow:  # a 0..N model never predicts "N+1+", but such photos are still scored
        probs = np.pad(probs, ((0, 0), (0, 1)))
    frame = predictions_frame(photos, probs, predicted, class_names(max_count))
    info |= {"model": str(model), "decode": predictor.model.decode, "tta": predictor.tta,
             "backbone": predictor.model.config.backbone, "head": predictor.model.config.head}
    return evaluate_predictions(frame, info, resamples)


def evaluate_predictions(frame: pd.DataFrame, info: dict | None = None, resamples: int = 1000) -> Evaluation:
    """Every metric from a predictions table (see `bintally.evaluation.predictions`)."""
    classes = prediction_classes(frame)
    max_count = len(classes) - 2
    true = frame["true_label"].to_numpy(dtype=int)
    pred = frame["predicted_label"].to_numpy(dtype=int)
    probs = prediction_probs(frame)
    metrics = count_metrics(true, pred, max_count)
    reliability = {suffix: calibration(probs[mask], true[mask], pred[mask]) for suffix, mask in subsets(true, max_count).items() if mask.any()}
    metrics |= {f"ece{suffix}": r["ece"] for suffix, r in reliability.items()}
    metrics |= {
        "ci95": bootstrap_intervals(true, pred, max_count, resamples=resamples),
        "per_class": per_class_metrics(true, pred, classes),
        "confusion": {"classes": classes, "matrix": confusion(true, pred, len(classes))},
        "calibration": reliability[""],
    }
    return Evaluation(metrics, frame, classes, dict(info or {}))


def evaluate_saved(path: str | Path, resamples: int = 1000) -> Evaluation:
    return evaluate_predictions(load_predictions(path), {"predictions": str(path)}, resamples)


def evaluate(model: str | Path | None = None, data: str | Path | None = None, split: str | None = "test",
             predictions: str | Path | None = None, json_out: str | Path | None = None, report: str | Path | None = None,
             save_to: str | Path | None = None, **options) -> Evaluation:
    """The whole command: evaluate a model (or a predictions file), then write what was asked for."""
    if predictions is not None:
        if model is not None:
            raise ConfigError("give either --model (with --data) or --predictions, not both")
        result = evaluate_saved(predictions, options.get("resamples", 1000))
    else:
        if model is None:
            raise ConfigError("nothing to evaluate: give --model RUN (with --data SRC) or --predictions FILE")
        result = evaluate_model(model, data, split, **options)
    if json_out is not None:
        result.write_json(json_out)
    if save_to is not None:
        save_predictions(result.predictions, save_to)
    if report is not None:
        result.write_report(report)
    return result

