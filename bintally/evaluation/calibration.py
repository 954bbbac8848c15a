"""Temperature scaling: one number that makes a model's probabilities mean what they say.

The audit ranks bins by `1 - P(count == record)`, so the probabilities themselves matter, not only
which class is largest. `fit_temperature` finds T minimising the negative log-likelihood of the
validation photos' labels under `p_T ∝ p^(1/T)` (Guo et al., 2017, applied to log-probabilities so
that it works for every head, ensemble and ONNX export alike); `calibrate_model` stores T in the
model artifact, and `Counter.probabilities` applies it on every backend. T keeps each photo's most
likely class, so argmax accuracy does not change.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from scipy.optimize import minimize_scalar

from bintally.errors import ConfigError, DataError
from bintally.evaluation.metrics import calibration as reliability
from bintally.inference.temperature import EPS, apply_temperature

if TYPE_CHECKING:
    import pandas as pd

T_BOUNDS = (0.05, 20.0)  # as model.json allows


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], EPS, None)).mean())


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the mean negative log-likelihood of `labels` (class indices) under `probs` at T."""
    labels = np.asarray(labels, dtype=int)
    if len(labels) < 2:
        raise ConfigError(f"cannot fit a temperature on {len(labels)} photo(s): it needs validation photos with labels")
    fit = minimize_scalar(lambda log_t: nll(apply_temperature(probs, float(np.exp(log_t))), labels), bounds=np.log(T_BOUNDS),
                          method="bounded", options={"xatol": 1e-4})
    return float(np.clip(round(float(np.exp(fit.x)), 4), *T_BOUNDS))


def ece(probs: np.ndarray, labels: np.ndarray, predicted: np.ndarray | None = None, bins: int = 10) -> float:
    """Expected calibration error of the confidence in the reported class (`predicted`, default the most likely one),
    in the same 10 bins as `bintally evaluate`."""
    return reliability(probs, labels, np.asarray(probs).argmax(-1) if predicted is None else predicted, bins)["ece"]


def calibration_summary(probs: np.ndarray, labels: np.ndarray, temperature: float, predicted: np.ndarray | None = None) -> dict:
    """NLL and ECE of `probs` before and after temperature T; ECE of the `predicted` class, which T does not move."""
    scaled = apply_temperature(probs, temperature)
    return {"method": "temperature", "temperature": temperature, "photos": int(len(labels)),
            "nll_before": round(nll(probs, labels), 4), "nll_after": round(nll(scaled, labels), 4),
            "ece_before": round(ece(probs, labels, predicted), 4), "ece_after": round(ece(scaled, labels, predicted), 4)}


def cross_validation_run(model: str | Path) -> Path | None:
    """The cross-validation run a model belongs to (RUN/cv.json beside RUN/model), else None."""
    path = Path(model)
    for run in (path, path.parent):
        if (run / "cv.json").is_file() and (run / "folds").is_dir():
            return run
    return None


def split_predictions(counter, data, split: str, batch_size: int, workers: int, progress: bool) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """(raw probabilities, the readable photos with their labels, info) of one split of `data`, photos above a model's
    max_count included."""
    from bintally.evaluation.evaluate import evaluation_photos, keep_readable, predict_photos, read_data

    photos, info = evaluation_photos(read_data(data, progress), split, counter.labels)
    prediction, kept = predict_photos(counter, photos, batch_size, workers, progress)
    return prediction.raw, keep_readable(photos, kept, info), info


def split_probs(counter, data, split: str, batch_size: int, workers: int, progress: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """(probabilities, labels, info) of one split's readable photos that the model's label space has a class for."""
    probs, photos, info = split_predictions(counter, data, split, batch_size, workers, progress)
    labels = photos["label"].to_numpy(dtype=int)
    keep = labels < counter.labels.n_classes  # without an overflow class, photos above max_count have no class to score
    return probs[keep], labels[keep], info


def out_of_fold_predictions(run: Path, backend: str, batch_size: int, workers: int,
                            progress: bool) -> tuple[np.ndarray, pd.DataFrame, dict]:
    """Each fold model's raw probabilities on its own validation fold, pooled, with those photos: photos no model that
    scores them trained on."""
    import pandas as pd

    from bintally.inference import Counter

    folds = sorted(run.glob("fold-*/model"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not folds:
        raise DataError(run, "a cross-validation run without fold models (fold-k/model): finish it with --resume first")
    probs, photos = [], []
    for model in folds:
        counter = Counter.load(model, backend, calibrated=False)
        p, ph, _ = split_predictions(counter, run / "folds" / f"{model.parent.name}.parquet", "val", batch_size, workers, progress)
        probs.append(p)
        photos.append(ph)
    return np.concatenate(probs), pd.concat(photos, ignore_index=True), {
        "source": f"{run} (out-of-fold: {len(folds)} fold models, each on its own validation fold)", "split": "val"}


def out_of_fold_probs(run: Path, backend: str, batch_size: int, workers: int, progress: bool) -> tuple[np.ndarray, np.ndarray, dict]:
    """Each fold model's probabilities on its own validation fold, pooled, for the photos their label space has a class for."""
    probs, photos, info = out_of_fold_predictions(run, backend, batch_size, workers, progress)
    labels = photos["label"].to_numpy(dtype=int)
    keep = labels < probs.shape[1]
    return probs[keep], labels[keep], info


def calibrate_model(model: str | Path, data: str | Path | None = None, split: str = "val", overwrite: bool = False,
                    batch_size: int = 64, workers: int = 2, backend: str = "torch", progress: bool = True) -> dict:
    """Fit the model's temperature and store it in its model.json; the summary (temperature, NLL and ECE before/after).

    A single model is fitted on one split of `data` (its validation photos). The ensemble of a cross-validation
    run trained on every train+val photo, so it is fitted on out-of-fold predictions instead (`data` unused).
    """
    from bintally.inference import Counter

    counter = Counter.load(model, backend, calibrated=False)
    artifact = counter.artifact
    if artifact.calibration and not overwrite:
        raise ConfigError(f"{artifact.path}: already calibrated (temperature {artifact.temperature:g}, fitted on "
                          f"{artifact.calibration.get('data', '?')}); pass --overwrite to fit it again")
    run = cross_validation_run(model) if artifact.model.members > 1 else None
    if run is not None:
        probs, labels, info = out_of_fold_probs(run, backend, batch_size, workers, progress)
    else:
        probs, labels, info = split_probs(counter, data, split, batch_size, workers, progress)
    predicted = counter.labels.decode(probs, artifact.decoding)  # the counts it reports, before and after
    summary = calibration_summary(probs, labels, fit_temperature(probs, labels), predicted)
    summary |= {"data": info["source"], "split": info["split"], "model_version": artifact.version,
                "fitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    replace(artifact, calibration=summary).write_metadata()
    return summary
