"""`bintally evaluate`: score a trained model on photos it has not seen, or recompute from saved predictions.

Photos that cannot be scored (unreadable or unlabelled when indexed, missing or changed since,
unreadable now) are left out with one line each and a count; the rest are scored.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from bintally.data.dataset import BinPhotos, photo_loader
from bintally.data.manifest import manifest_name, usable
from bintally.data.sample import read_or_index
from bintally.data.verify import STALE, drop_stale
from bintally.errors import ConfigError, DataError
from bintally.evaluation.metrics import (
    ABOVE_PUBLISHED,
    PUBLISHED_MAX,
    bootstrap_intervals,
    calibration,
    check_resamples,
    confusion,
    count_metrics,
    per_class_metrics,
    subsets,
)
from bintally.evaluation.predictions import load_predictions, prediction_classes, prediction_probs, predictions_frame, save_predictions
from bintally.evaluation.verification import DEFAULT_THRESHOLD, SEED, answer_probabilities, best_threshold, renumber, verification_questions, verify_quantity
from bintally.inference import Counter, Prediction
from bintally.io import atomic_path, check_output_file, check_output_folder
from bintally.labels import LabelSpace
from bintally.progress import progress_bar

log = logging.getLogger("bintally.evaluation")


@dataclass
class Evaluation:
    metrics: dict  # the flat summary (n, accuracy, accuracy_0_5, rmse_0_5, ...) with CIs and tables beside it
    predictions: pd.DataFrame
    classes: list[str]
    info: dict = field(default_factory=dict)
    questions: pd.DataFrame | None = None  # quantity verification's questions and answers, when it was asked for

    @property
    def space(self) -> LabelSpace:
        return LabelSpace.from_names(self.classes)

    @property
    def max_count(self) -> int:
        return self.space.max_count

    def subset_names(self) -> list[tuple[str, str]]:
        """(name, metric-key suffix) of each summary subset; the suffixes stay _0_N and _1_N whatever the label space."""
        low, n = self.space.min_count, self.space.max_count
        names = [("all", ""), (f"{low}-{n}", f"_0_{n}"), (f"1-{n}", f"_1_{n}")]
        if n != PUBLISHED_MAX:  # the published results' subsets, whatever the label space
            names += [(f"{low}-{PUBLISHED_MAX}", f"_0_{PUBLISHED_MAX}"), (f"1-{PUBLISHED_MAX}", f"_1_{PUBLISHED_MAX}")]
        if self.metrics.get(f"n{ABOVE_PUBLISHED}"):
            names.append((f"{PUBLISHED_MAX + 1}+", ABOVE_PUBLISHED))
        return names

    def to_json(self) -> dict:
        return {**self.metrics, "info": self.info}

    def write_json(self, path: str | Path) -> Path:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(finite(self.to_json()), indent=2, default=str))
        return Path(path)

    def write_report(self, out: str | Path) -> Path:
        from bintally.evaluation.report import write_report

        return write_report(self, out)


def finite(value):
    """NaN and infinities as null, so that the JSON is valid everywhere (not just in Python)."""
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


# ---------------------------------------------------------------- the photos


def evaluation_photos(df: pd.DataFrame, split: str | None, space: LabelSpace) -> tuple[pd.DataFrame, dict]:
    """The usable photos of one split (or all photos when the data has no split column), labelled for the model.

    Photos missing or changed since indexing (`drop_stale`) or unusable when indexed are left out, as
    are photos below the model's min_count. Labels have an overflow class even when the model has
    none: such a model is still scored on photos above its max_count.
    """
    source = manifest_name(df)
    info = {"source": source, "photos": len(df), "no_split_column": "split" not in df}
    df = drop_unusable(drop_stale(select_split(df, split, source, info)), source, info)
    scoring = space.with_overflow()
    labels = scoring.label_of(df["count"])
    outside = labels.isna().to_numpy()
    if outside.any():
        info["outside_label_space"] = (f"{int(outside.sum())} photo(s) with fewer than {space.min_count} items "
                                       f"left out: the model counts {space.description}")
        log.warning("%s: %s", source, info["outside_label_space"])
    if outside.all():
        raise DataError(source, f"no photos to evaluate: none of the photos of split {info['split']} has a count "
                                f"the model knows ({space.description})")
    df = df[~outside].assign(label=labels[~outside].astype(int)).reset_index(drop=True)
    return df, info


def select_split(df: pd.DataFrame, split: str | None, source: str, info: dict) -> pd.DataFrame:
    if split is None or "split" not in df:
        info["split"] = "all (the data has no split column)" if split is not None else "all"
        return df
    info["split"] = split
    chosen = df[df["split"] == split]
    if chosen.empty:
        present = ", ".join(sorted(set(df["split"].dropna().astype(str)))) or "none"
        raise DataError(source, f"no photos to evaluate: split {split!r} is empty (splits present: {present})")
    return chosen


def drop_unusable(df: pd.DataFrame, source: str, info: dict) -> pd.DataFrame:
    """Leave out photos that were unusable when indexed (a line each) or went stale since (drop_stale reported those)."""
    ok = (usable(df) & df["count"].notna()).to_numpy()
    stale = df["status"].astype(str).str.startswith(STALE).to_numpy()
    info["unusable"] = int((~ok).sum())
    info["stale"] = int(stale.sum())
    unusable = df[~ok & ~stale]
    for row in unusable.itertuples():
        log.warning("%s: %s (skipped)", row.path, row.status if row.status != "ok" else "no count")
    if len(unusable):
        log.warning("%d photo(s) of %s skipped: unreadable or unlabelled when indexed", len(unusable), source)
    if ok.sum() == 0:
        raise DataError(source, f"no photos to evaluate: none of the {len(df)} photo(s) of split {info['split']} "
                                f"is usable (unreadable, unlabelled, or missing or changed since indexing)")
    return df[ok]


# ---------------------------------------------------------------- the model's predictions


def predict_photos(counter: Counter, photos: pd.DataFrame, batch_size: int = 64, workers: int = 2,
                   progress: bool = True) -> tuple[Prediction, np.ndarray]:
    """(prediction, row index of each) for the photos that could be read; unreadable ones are left out."""
    loader = photo_loader(BinPhotos(photos, counter.artifact.transform, train=False), batch_size, workers)
    raw, kept = [np.empty((0, counter.labels.n_classes), np.float32)], [np.empty(0, int)]
    for x, _, index in progress_bar(loader, desc="predicting", unit="batch", enabled=progress):
        if len(index):
            raw.append(counter.network_probabilities(x.numpy()))
            kept.append(index.numpy())
    return counter.prediction(np.concatenate(raw)), np.concatenate(kept)


def keep_readable(photos: pd.DataFrame, kept: np.ndarray, info: dict) -> pd.DataFrame:
    """The photos that were predicted; the others (each reported by BinPhotos as it failed) are counted in info."""
    lost = photos.drop(index=photos.index[kept])
    if len(lost):
        info["unreadable"] = lost["path"].tolist()
        log.warning("%d photo(s) of %s could not be read and were left out", len(lost), info["source"])
    if not len(kept):
        raise DataError(info["source"], f"no photos to evaluate: none of the {len(photos)} photo(s) could be read")
    return photos.iloc[kept].reset_index(drop=True)


def read_data(data: str | Path | None, progress: bool) -> pd.DataFrame:
    """The manifest (or folder, indexed now), its source being what the user named, so that messages name it."""
    df = read_or_index(data, progress=progress)
    if data is not None:
        df.attrs["info"] = {**df.attrs.get("info", {}), "source": str(data)}
    return df


def evaluate_model(model: str | Path, data: str | Path | None, split: str | None = "test", batch_size: int = 64,
                   workers: int = 2, resamples: int = 1000, progress: bool = True, backend: str = "torch",
                   verify: bool = False, seed: int = SEED) -> Evaluation:
    """Predict every photo of the split with the trained model and compute every metric; with `verify`, also ABID's
    quantity verification (`bintally.evaluation.verification`) on the photos' metadata."""
    counter = Counter.load(model, backend)
    df = read_data(data, progress)
    photos, info = evaluation_photos(df, split, counter.labels)
    questions = verification_questions(photos, seed) if verify else None  # every metadata file is read before the model runs
    loader = {"batch_size": batch_size, "workers": workers, "progress": progress}
    prediction, kept = predict_photos(counter, photos, **loader)
    photos = keep_readable(photos, kept, info)
    prediction = prediction.with_overflow_class()  # photos above max_count are scored too
    frame = predictions_frame(photos, prediction)
    info |= {"model": str(model), "model_version": counter.artifact.version, "backend": counter.backend_name,
             "decode": counter.artifact.decoding, "tta": counter.artifact.tta,
             "backbone": counter.artifact.model.backbone, "head": counter.artifact.model.head}
    result = evaluate_predictions(frame, info, resamples)
    if verify:
        threshold, threshold_from = validation_threshold(counter, df, split, seed, loader)
        metrics, result.questions = verify_quantity(renumber(questions, kept), prediction.probabilities, prediction.space,
                                                    threshold, threshold_from)
        result.metrics["quantity_verification"] = metrics | {"seed": seed}
    return result


def validation_threshold(counter: Counter, df: pd.DataFrame, split: str | None, seed: int, loader: dict) -> tuple[float, str]:
    """(threshold, where it comes from): chosen on the validation split's questions when another split is scored,
    else the default. Only the validation photos with SKU lines are predicted."""
    if split in (None, "val") or "split" not in df or not (df["split"] == "val").any():
        return DEFAULT_THRESHOLD, "default: no validation split apart from the scored photos"
    photos, _ = evaluation_photos(df, "val", counter.labels)
    questions = verification_questions(photos, seed)
    if questions.empty:
        return DEFAULT_THRESHOLD, "default: no SKU lines in the validation split"
    asking = questions["photo"].unique()
    prediction, kept = predict_photos(counter, photos.iloc[asking].reset_index(drop=True), **loader)
    questions = renumber(renumber(questions, asking), kept)
    prediction = prediction.with_overflow_class()
    p_yes = answer_probabilities(questions, prediction.probabilities, prediction.space)
    return best_threshold(p_yes, questions["truth"].to_numpy(dtype=bool)), f"val ({len(questions)} questions)"


def true_counts(frame: pd.DataFrame, space: LabelSpace) -> np.ndarray:
    """Each photo's real count (column true_count) where the table has it, else its label's count (a bin above
    max_count then counts as max_count + 1)."""
    if "true_count" in frame:
        return frame["true_count"].to_numpy(dtype=int)
    return space.count_of(frame["true_label"].to_numpy(dtype=int))


def evaluate_predictions(frame: pd.DataFrame, info: dict | None = None, resamples: int = 1000) -> Evaluation:
    """Every metric from a predictions table (see `bintally.evaluation.predictions`); summaries are on counts, the
    photos' real counts where the table has them."""
    classes = prediction_classes(frame)
    space = LabelSpace.from_names(classes)
    true_label = frame["true_label"].to_numpy(dtype=int)
    pred_label = frame["predicted_label"].to_numpy(dtype=int)
    true, pred = true_counts(frame, space), space.count_of(pred_label)
    probs = prediction_probs(frame)
    metrics = count_metrics(true, pred, space.max_count)
    reliability = {suffix: calibration(probs[mask], true_label[mask], pred_label[mask])
                   for suffix, mask in subsets(true, space.max_count).items() if mask.any()}
    metrics |= {f"ece{suffix}": r["ece"] for suffix, r in reliability.items()}
    metrics |= {
        "ci95": bootstrap_intervals(true, pred, space.max_count, resamples=resamples),
        "per_class": per_class_metrics(true_label, pred_label, classes),
        "confusion": {"classes": classes, "matrix": confusion(true_label, pred_label, len(classes))},
        "calibration": reliability[""],
    }
    scored = "the photos' real counts" if "true_count" in frame else "the true classes' counts (no true_count column)"
    return Evaluation(metrics, frame, classes, {**(info or {}), "errors_against": scored})


def evaluate_saved(path: str | Path, resamples: int = 1000) -> Evaluation:
    return evaluate_predictions(load_predictions(path), {"predictions": str(path)}, resamples)


def check_outputs(json_out, report, save_to) -> None:
    """Fail before any work if an output cannot be written."""
    if json_out is not None:
        check_output_file(json_out, (".json",))
    if save_to is not None:
        check_output_file(save_to, (".csv", ".parquet"))
    if report is not None:
        check_output_folder(report)


def evaluate(model: str | Path | None = None, data: str | Path | None = None, split: str | None = "test",
             predictions: str | Path | None = None, json_out: str | Path | None = None, report: str | Path | None = None,
             save_to: str | Path | None = None, **options) -> Evaluation:
    """The whole command: evaluate a model (or a predictions file), then write what was asked for."""
    check_outputs(json_out, report, save_to)
    check_resamples(options.get("resamples", 1000))
    if predictions is not None:
        if model is not None:
            raise ConfigError("give either --model (with --data) or --predictions, not both")
        if options.get("verify"):
            raise ConfigError("--verify-quantity needs --model and --data (it reads the photos' metadata and may predict "
                              "the validation split), not --predictions")
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
