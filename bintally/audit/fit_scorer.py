"""`bintally audit fit-scorer`: fit the record-aware scorer on developer photos and simulated record errors.

    bintally audit fit-scorer --model runs/whole-range --data runs/abid.parquet --out bintally/audit/scorers/default.json --overwrite

1. Photo probabilities of developer photos, never test: for a cross-validation run (RUN/fold-k/model and
   RUN/folds/fold-k.parquet), each fold model on its own validation fold (out-of-fold, train+val); for a single model,
   its validation split (`--split` chooses). They are calibrated at the temperature of the model named, as an audit
   with it would see them.
2. The truth: each photo's record lines (ABID metadata, `meta_path`); photos whose lines do not add up to their count
   are left out. The bin constants (bin volume, median unit sizes) are estimated from these records.
3. `--seeds` corrupted copies of the records (`bintally.audit.simulate`, the `default` mix) at `--rate` wrong, with a
   fifth of the records stripped of their sizes and weights (the scorer must work without them).
4. Cross-validation over the photos (`--folds`, every copy of a photo in one fold): each fold's scorer scores its
   photos under fresh corruptions at 5% wrong (the default mix, and the `shifted` mix for robustness); ROC AUC and the
   recall of a 10% recount budget, beside the `mismatch` and `distance` rankers, per variant: a logistic regression
   (the regularisation C with the best mean AUC) and a small gradient-boosting model (`<variant>-hgb`).
5. The final scorer: each variant of the kind (logistic or trees) with the better mean AUC on the `default` mix (never
   `shifted`: that mix is the robustness check), fitted on every photo, its raw score moved from the training share of
   wrong records to `--prior`, written as JSON.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bintally.audit.record_scorer import (
    VARIANT_FEATURES,
    BinConstants,
    CountDistribution,
    LinearScorer,
    RecordScorer,
    TreeScorer,
    feature_matrix,
    features,
    write_scorer,
)
from bintally.audit.simulate import corrupt_records
from bintally.errors import ConfigError, DataError
from bintally.models.artifact import MODEL_HELP
from bintally.progress import PROGRESS_HELP
from bintally.settings import Backend, check_settings, setting

FIT_SPLITS = ("train", "val", "train+val")
C_GRID = (0.01, 0.1, 1.0, 10.0)
EVAL_RATE = 0.05  # the share of wrong records the cross-validated metrics are measured at
BUDGET = 0.10
DIMS_DROPOUT = 0.2  # the share of training records stripped of sizes and weights
MIN_PHOTOS = 50


@dataclass
class FitScorerConfig:
    model: str = setting(flag=("--model", "-m"), help=MODEL_HELP + " A cross-validation run gives out-of-fold probabilities.")
    data: str = setting(help="The split manifest the model was trained with (its photos' metadata holds the record lines).")
    out: str = setting(help="The scorer file to write (.json), e.g. bintally/audit/scorers/default.json.")
    split: str | None = setting(None, default_text="train+val for a cross-validation run, val for a single model",
                                help="Developer photos to fit on: train, val or train+val (never test).")
    seeds: int = setting(5, low=1, high=50, help="Corrupted copies of each photo's record to fit on.")
    rate: float = setting(0.5, low=0.05, high=0.95, help="Share of the records made wrong in those copies.")
    prior: float = setting(0.05, low=0.001, high=0.5, help="Share of wrong records the scorer's probabilities assume.")
    folds: int = setting(5, low=2, high=20, help="Cross-validation folds of the report.")
    overwrite: bool = setting(False, help="Replace an existing scorer file.")
    backend: Backend = setting(Backend.TORCH, help="Inference backend: PyTorch, or ONNX Runtime (a run is exported first, once).")
    batch_size: int = setting(64, low=1, help="Photos per forward pass.")
    workers: int = setting(2, low=0, help="Data-loader processes.")
    progress: bool = setting(True, help=PROGRESS_HELP)

    def validate(self) -> "FitScorerConfig":
        check_settings(self, "fit-scorer setting")
        if self.split == "test":
            raise ConfigError("split test: the test split is for the final score; fit on train, val or train+val")
        if self.split is not None and self.split not in FIT_SPLITS:
            raise ConfigError(f"unknown split {self.split!r}: use one of {', '.join(FIT_SPLITS)}")
        return self


@dataclass
class Developer:
    """The developer photos: calibrated probabilities, the true record of each, and where they came from."""

    dist: CountDistribution
    truth: list[tuple]
    info: dict


# ---------------------------------------------------------------- the developer photos


def fit_scorer(config: FitScorerConfig) -> dict:
    """Fit, cross-validate and write the scorer; its file's `training` section (what was fitted on, and how well)."""
    from bintally.io import check_output_file

    config.validate()
    out = check_output_file(config.out, (".json",))
    if out.exists() and not config.overwrite:
        raise DataError(out, "exists: pass --overwrite to replace it")
    started = time.perf_counter()
    developer = developer_photos(config)
    constants = estimate_constants(developer.truth)
    cv = cross_validate(developer, constants, config)
    train = simulated(developer, constants, range(config.seeds), config.rate, "default", dropout=True)
    kinds = chosen_kinds(cv)
    variants = {name: fitted_variant(name, train, cv[name]["C"], config.prior, kinds[name]) for name in VARIANT_FEATURES}
    training = developer.info | {"seeds": config.seeds, "rate": config.rate, "mix": "default", "dims_dropout": DIMS_DROPOUT,
                                 "kinds": kinds, "cross_validation": cv, "seconds": round(time.perf_counter() - started, 1),
                                 "fitted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_scorer(RecordScorer(variants, constants, config.prior, training), out)
    return training


def developer_photos(config: FitScorerConfig) -> Developer:
    """Calibrated probabilities of the developer photos (out-of-fold for a cross-validation run) and their true records."""
    from bintally.evaluation.calibration import cross_validation_run
    from bintally.evaluation.evaluate import read_data
    from bintally.inference.temperature import apply_temperature
    from bintally.models.artifact import read_artifact

    artifact = read_artifact(config.model)
    needs = ("needs a split manifest (.parquet) with meta_path (`bintally data index` then `data split` of a bucket folder): "
             "the scorer learns from each photo's record lines")
    if Path(config.data).suffix.lower() != ".parquet":
        raise DataError(config.data, needs)
    manifest = read_data(config.data, progress=False)
    if "split" not in manifest or "meta_path" not in manifest:
        raise DataError(config.data, needs)
    run = cross_validation_run(config.model) if artifact.model.members > 1 else None
    splits = (config.split or ("train+val" if run is not None else "val")).split("+")
    raw, photos, source = predicted_photos(config, run, splits, manifest)
    truth, kept = truth_records(photos)
    if kept.sum() < MIN_PHOTOS:
        raise DataError(config.data, f"{int(kept.sum())} developer photo(s) with usable record lines in split(s) "
                                     f"{'+'.join(splits)}: the scorer needs at least {MIN_PHOTOS}")
    probs = apply_temperature(raw[kept], artifact.temperature)
    info = {"model": str(config.model), "model_version": artifact.version, "labels": artifact.labels.names,
            "temperature": artifact.temperature, "data": str(config.data), "splits": splits, "probabilities": source,
            "photos": int(kept.sum()), "left_out": int((~kept).sum())}
    return Developer(CountDistribution.of(artifact.labels, probs), truth, info)


def predicted_photos(config: FitScorerConfig, run: Path | None, splits: list[str], manifest):
    """(raw probabilities, photos, how they were had) of the developer photos in `splits`."""
    import pandas as pd

    from bintally.evaluation.calibration import out_of_fold_predictions, split_predictions
    from bintally.inference import Counter

    if run is not None:
        raw, photos, _ = out_of_fold_predictions(run, config.backend, config.batch_size, config.workers, config.progress)
        wanted = set(manifest.loc[manifest["split"].isin(splits), "sha256"].astype(str))
        keep = photos["sha256"].astype(str).isin(wanted).to_numpy()
        return raw[keep], photos[keep].reset_index(drop=True), f"out-of-fold ({run}: each fold model on its own validation fold)"
    counter = Counter.load(config.model, config.backend, calibrated=False)
    parts = [split_predictions(counter, config.data, split, config.batch_size, config.workers, config.progress) for split in splits]
    return (np.concatenate([p[0] for p in parts]), pd.concat([p[1] for p in parts], ignore_index=True),
            f"the model on split(s) {'+'.join(splits)}" + (" (photos it trained on: optimistic)" if "train" in splits else ""))


def truth_records(photos) -> tuple[list[tuple], np.ndarray]:
    """Each photo's record lines from its metadata, and which photos have lines that add up to their count."""
    from bintally.data.metadata import load_json
    from bintally.data.records import metadata_lines

    truth, kept = [], []
    for meta, count in zip(photos["meta_path"], photos["count"]):
        if not isinstance(meta, str) or not meta:
            kept.append(False)
            continue
        doc = load_json(meta, "metadata file")
        lines = metadata_lines(doc, meta) if isinstance(doc, dict) else ()
        ok = isinstance(doc, dict) and sum(line.qty for line in lines) == int(count)
        kept.append(ok)
        if ok:
            truth.append(lines)
    return truth, np.array(kept, dtype=bool)


def estimate_constants(truth: list[tuple]) -> BinConstants:
    """The bin's volume (99th percentile of the clean records' total volume) and the median unit's size and weight."""
    measured = [r for r in truth if r and all(line.has_dimensions for line in r)]
    volumes = [sum(line.qty * line.volume_in3 for line in r) for r in measured]
    units = [line for r in truth for line in r if line.has_dimensions and line.volume_in3 > 0]
    weights = [line.weight_lb for r in truth for line in r if line.weight_lb]
    default = BinConstants()
    if len(volumes) < 20 or len(units) < 20:
        return default
    return BinConstants(float(np.percentile(volumes, 99)), float(np.median([u.volume_in3 for u in units])),
                        float(np.median([u.longest_in for u in units])),
                        float(np.median(weights)) if len(weights) >= 20 else default.unit_weight_lb)


# ---------------------------------------------------------------- simulated records and the fit


def without_sizes(record: tuple) -> tuple:
    return tuple(replace(line, length_in=None, width_in=None, height_in=None, weight_lb=None) for line in record)


def simulated(developer: Developer, constants: BinConstants, seeds, rate: float, mix: str, dropout: bool = False,
              photos: np.ndarray | None = None) -> dict:
    """Features of corrupted copies of the records (one per seed): {"x": features by name, "y", "photo"}."""
    photos = np.arange(len(developer.truth)) if photos is None else photos
    truth = [developer.truth[i] for i in photos]
    parts = []
    for seed in seeds:
        made = corrupt_records(truth, rate, mix, seed)
        records = made.records
        if dropout:
            strip = np.random.default_rng([seed, 1]).random(len(records)) < DIMS_DROPOUT
            records = [without_sizes(r) if s else r for r, s in zip(records, strip)]
        dist = CountDistribution(developer.dist.space, developer.dist.probs[photos])
        parts.append((features(dist, records, made.totals(), constants), made.corrupted, photos, made.totals()))
    return {"x": {name: np.concatenate([p[0][name] for p in parts]) for name in parts[0][0]},
            "y": np.concatenate([p[1] for p in parts]), "photo": np.concatenate([p[2] for p in parts]),
            "total": np.concatenate([p[3] for p in parts])}


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float):
    """(mean, scale, coef, intercept) of a logistic regression on standardised features."""
    from sklearn.linear_model import LogisticRegression

    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-9, scale, 1.0)
    model = LogisticRegression(C=c, max_iter=2000).fit((x - mean) / scale, y)
    return mean, scale, model.coef_[0], float(model.intercept_[0])


def fit_trees(x: np.ndarray, y: np.ndarray):
    """A small gradient-boosting model (sklearn's HistGradientBoostingClassifier)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_depth=3, max_iter=100, learning_rate=0.1, random_state=0).fit(x, y)


def fitted_variant(name: str, data: dict, c: float | None, prior: float | None = None,
                   kind: str = "logistic") -> LinearScorer | TreeScorer:
    """One variant of `kind` (logistic at regularisation C, or trees) fitted on simulated records; with `prior`, its
    raw score moved from the training share of wrong records to that share."""
    names = VARIANT_FEATURES[name]
    x, y = feature_matrix(data["x"], names), data["y"]
    shift = 0.0
    if prior is not None:
        shift = logit(prior) - logit(float(np.clip(y.mean(), 1e-6, 1 - 1e-6)))
    if kind == "trees":
        return TreeScorer.of_model(name, names, fit_trees(x, y), shift)
    mean, scale, coef, intercept = fit_logistic(x, y, c)
    return LinearScorer(name, names, mean, scale, coef, intercept + shift)


def chosen_kinds(cv: dict) -> dict[str, str]:
    """Per variant, trees where their cross-validated AUC on the `default` mix beats the logistic model's."""
    auc = {name: row["default"]["roc_auc"]["mean"] for name, row in cv.items()}
    return {name: "trees" if auc[f"{name}-hgb"] > auc[name] else "logistic" for name in VARIANT_FEATURES}


def logit(p: float) -> float:
    return math.log(p / (1 - p))


# ---------------------------------------------------------------- cross-validation


def photo_folds(n: int, folds: int, seed: int = 0) -> np.ndarray:
    """The fold of each photo (every corrupted copy of a photo falls in its photo's fold)."""
    return np.random.default_rng(seed).permutation(np.arange(n) % folds)


def cross_validate(developer: Developer, constants: BinConstants, config: FitScorerConfig) -> dict:
    """Per variant: the chosen C, and per mix the mean and spread of ROC AUC and 10%-budget recall over the seeds, with
    the `mismatch` and `distance` rankers (and a small gradient-boosting model for `lines`) on the same records."""
    fold = photo_folds(len(developer.truth), config.folds)
    evaluation = {mix: [simulated(developer, constants, [10_000 + s], EVAL_RATE, mix) for s in range(config.seeds)]
                  for mix in ("default", "shifted")}
    scores = {}  # (ranker, C) -> mix -> [scores per eval seed]
    for k in range(config.folds):
        train = simulated(developer, constants, range(config.seeds), config.rate, "default", dropout=True,
                          photos=np.flatnonzero(fold != k))
        for name in VARIANT_FEATURES:
            for c in C_GRID:
                add_fold_scores(scores, (name, c), fitted_variant(name, train, c).probability, evaluation, fold == k)
            trees = fitted_variant(name, train, None, kind="trees")
            add_fold_scores(scores, (f"{name}-hgb", None), trees.probability, evaluation, fold == k)
    return summarise(scores, evaluation, developer)


def add_fold_scores(scores: dict, key, predict, evaluation: dict, in_fold: np.ndarray) -> None:
    for mix, seeds in evaluation.items():
        slots = scores.setdefault(key, {}).setdefault(mix, [np.zeros(len(in_fold)) for _ in seeds])
        for slot, data in zip(slots, seeds):
            slot[in_fold] = predict({name: v[in_fold] for name, v in data["x"].items()})


def ranking_metrics(scores: np.ndarray, wrong: np.ndarray, seed: int) -> dict:
    """ROC AUC and the share of the wrong records in the top BUDGET of bins (ties in random order)."""
    from sklearn.metrics import roc_auc_score

    order = np.lexsort((np.random.default_rng(seed).random(len(scores)), -scores))
    top = order[:math.ceil(BUDGET * len(scores) - 1e-9)]
    return {"roc_auc": float(roc_auc_score(wrong, scores)), "recall_at_10": float(wrong[top].sum() / max(wrong.sum(), 1))}


def photo_only_scores(dist: CountDistribution, data: dict) -> dict[str, np.ndarray]:
    """The rankers of the photo and the record total alone, on the same records: mismatch and distance."""
    from bintally.audit.scoring import expected_distance

    totals = data["total"]
    return {"mismatch": 1 - dist.space.probability_of(dist.probs, totals),
            "distance": expected_distance(dist.space, dist.probs, totals)}


def summarise(scores: dict, evaluation: dict, developer: Developer) -> dict:
    per_ranker = {}
    for (name, c), by_mix in scores.items():
        per_ranker.setdefault(name, {})[c] = {mix: [ranking_metrics(s, data["y"], i) for i, (s, data) in
                                                    enumerate(zip(by_mix[mix], evaluation[mix]))] for mix in by_mix}
    out = {}
    for name, by_c in per_ranker.items():
        best = max(by_c, key=lambda c: np.mean([m["roc_auc"] for m in by_c[c]["default"]]))
        out[name] = {"C": best} | {mix: spread(runs) for mix, runs in by_c[best].items()}
    return out | baselines(evaluation, developer)


def baselines(evaluation: dict, developer: Developer) -> dict:
    out = {}
    for mix, seeds in evaluation.items():
        for i, data in enumerate(seeds):
            dist = CountDistribution(developer.dist.space, developer.dist.probs[data["photo"]])
            for name, s in photo_only_scores(dist, data).items():
                out.setdefault(name, {}).setdefault(mix, []).append(ranking_metrics(s, data["y"], i))
    return {name: {mix: spread(runs) for mix, runs in by_mix.items()} for name, by_mix in out.items()}


def spread(runs: list[dict]) -> dict:
    """Mean and standard deviation over the seeds of each metric."""
    return {metric: {"mean": round(float(np.mean([r[metric] for r in runs])), 4),
                     "sd": round(float(np.std([r[metric] for r in runs])), 4)} for metric in runs[0]}
