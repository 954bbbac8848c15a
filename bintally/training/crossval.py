"""Grouped K-fold cross-validation: honest model selection on a few thousand photos.

`bintally train --folds K` splits the manifest's train+val photos into K folds of whole duplicate
groups (the same id blocks, identical bytes and near-identical photos that `data split` keeps
together), stratified by count, and trains K runs: fold k validates on the k-th fold and trains on
the others. The test split is never touched. Each fold keeps its last epoch (choosing an epoch on
the fold that scores it would flatter the score), and reports its validation metrics; the mean and
standard deviation over the folds are the recipe's estimate. The K fold models together form the
run's model: an ensemble whose probabilities are averaged (`CountingEnsemble`).

    RUN/config.json             the settings (folds = K)
    RUN/folds/fold-K.parquet    each fold's manifest: that fold is val, the other folds train, test as it was
    RUN/fold-K/                 each fold's training run (resumable on its own)
    RUN/cv.json                 per-fold metrics, mean and standard deviation
    RUN/model/                  the ensemble of the K fold models
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

from bintally.data.duplicates import ID_BLOCK, NEAR_DUPLICATE_DISTANCE, duplicate_groups
from bintally.data.manifest import manifest_name, write_manifest
from bintally.data.split import assign_folds as group_folds
from bintally.errors import ConfigError, DataError
from bintally.evaluation.metrics import PUBLISHED_MAX
from bintally.io import atomic_path
from bintally.models.artifact import load_model as load_artifact_model
from bintally.models.artifact import read_artifact, save_model
from bintally.models.model import CountingEnsemble
from bintally.training.checkpoint import checkpoint_path
from bintally.training.config import TrainConfig
from bintally.training.data import config_manifest, save_split
from bintally.training.engine import Interrupted, train_single_run
from bintally.training.rundir import RunDir, RunLock, holds_run, resumed_config

log = logging.getLogger("bintally.train")
POOL = ("train", "val")  # the photos cross-validation may use; test is left alone
REPORTED = ("accuracy", "rmse", "mae", "within1")
CV_FILE = "cv.json"


@dataclass
class CrossValResult:
    """A finished cross-validation (RUN/cv.json): each fold's validation metrics, and their mean and standard deviation."""

    run: str
    folds: list[dict]  # per fold: its run, photo counts, wall time and validation metrics (val_*)
    summary: dict  # metric -> {"mean", "std"} over the folds

    @property
    def wall_time_s(self) -> float:
        return sum(f["wall_time_s"] or 0 for f in self.folds)

    def to_json(self) -> dict:
        return {"run": self.run, "k": len(self.folds), "folds": self.folds, "summary": self.summary}


def assign_folds(df: pd.DataFrame, k: int, seed: int) -> pd.Series:
    """The fold (0..k-1) of each labelled train+val photo (NA elsewhere); whole duplicate groups go to one fold."""
    pool = df["split"].isin(POOL) & df["label"].notna()
    photos = df[pool].reset_index()
    groups = duplicate_groups(photos, NEAR_DUPLICATE_DISTANCE, ID_BLOCK)
    if len(np.unique(groups)) < k:
        raise DataError(manifest_name(df), f"{len(np.unique(groups))} groups of photos in train+val, fewer than the "
                                           f"{k} folds asked for; use fewer --folds or more photos")
    folds, _ = group_folds(photos["label"].to_numpy(dtype=int), groups, seed, k)
    return pd.Series(folds, index=photos["index"]).reindex(df.index).astype("Int64")


def fold_manifest(df: pd.DataFrame, folds: pd.Series, fold: int) -> pd.DataFrame:
    """The manifest for one fold: its photos are val, the other folds' train; test and excluded photos as they were."""
    split = df["split"].copy()
    in_pool = folds.notna()
    split[in_pool] = np.where(folds[in_pool] == fold, "val", "train")
    out = df.assign(split=split)
    out.attrs = {**df.attrs, "info": {**df.attrs.get("info", {}), "fold": fold + 1, "folds": int(folds.max()) + 1}}
    return out


def fold_summary(folds: list[dict]) -> dict:
    """Mean and standard deviation (over folds, ddof 1) of each validation metric on all photos, 0-5 and 1-5."""
    summary = {}
    for suffix in ("", f"_0_{PUBLISHED_MAX}", f"_1_{PUBLISHED_MAX}"):
        for name in REPORTED:
            key = f"val_{name}{suffix}"
            values = np.array([f[key] for f in folds if f.get(key) is not None], dtype=float)
            if len(values):
                summary[key] = {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}
    return summary


def fold_init(init: str | None, run_dir: Path, fold: int) -> str | None:
    """--init with --folds: a cross-validation run over the same folds, whose fold k starts fold k (no fold sees its val photos)."""
    if init is None:
        return None
    source = Path(init)
    if not (source / CV_FILE).is_file():
        raise ConfigError(f"--init {init}: with --folds, give a finished cross-validation run (with {CV_FILE}), "
                          f"so that each fold starts from the model of the same fold")
    name = f"fold-{fold + 1}.parquet"
    theirs, mine = (pd.read_parquet(r / "folds" / name, columns=["id", "split"]) for r in (source, run_dir))
    if set(theirs.loc[theirs["split"] == "val", "id"]) != set(mine.loc[mine["split"] == "val", "id"]):
        raise ConfigError(f"--init {init}: its fold {fold + 1} validates on other photos than this run's; "
                          f"use the same data, label space, --folds and --seed")
    return str(source / f"fold-{fold + 1}")


def fold_record(fold: int, fold_dir: Path) -> dict:
    """A finished fold's validation metrics (its last epoch) and training time, from its result.json."""
    saved = json.loads((fold_dir / "result.json").read_text())
    final = {k: v for k, v in saved["final"].items() if k.startswith("val_")}
    return {"fold": fold + 1, "run": str(fold_dir), "wall_time_s": saved.get("wall_time_s"), **final}


def cross_validate(config: TrainConfig, resume: str | None = None, explicit: dict | None = None,
                   overwrite: bool = False) -> CrossValResult:
    """Train the K folds (or go on with those a stopped cross-validation left), then write cv.json and the ensemble."""
    if resume is not None:
        run_dir, folder = Path(resume), None
        config = resumed_config(run_dir, explicit or {})
        lock = RunLock(run_dir).acquire()
    else:
        folder = RunDir.new(config.out, overwrite)
        run_dir, lock = folder.path, folder.lock
        clear_folds(run_dir)  # an --overwrite replaces the old cross-validation's folds too (never resumes them)
    ended_cleanly = False
    try:
        if resume is None:
            config = write_folds(config, run_dir)
            for fold in range(config.folds):  # --init from other folds is refused before any fold trains
                fold_init(config.init, run_dir, fold)
            folder.started()  # the fold manifests are written: from here on this is a run to resume
        records = [train_one_fold(config, run_dir, fold) for fold in range(config.folds)]
        cv = CrossValResult(str(run_dir), records, fold_summary(records))
        write_results(cv, config, run_dir)
        ended_cleanly = True
        return cv
    finally:
        if folder is not None:
            folder.close(failed=not ended_cleanly)  # a failed start (bad data, say) leaves no folder behind
        else:
            lock.release()


def write_results(cv: CrossValResult, config: TrainConfig, run_dir: Path) -> None:
    """RUN/cv.json, RUN/model (the ensemble of the fold models) and RUN/result.json."""
    with atomic_path(run_dir / CV_FILE) as tmp:
        tmp.write_text(json.dumps(cv.to_json(), indent=2, default=str))
    save_ensemble(run_dir, config, cv)
    with atomic_path(run_dir / "result.json") as tmp:
        tmp.write_text(json.dumps({"run": str(run_dir), "cross_validation": cv.summary, "wall_time_s": cv.wall_time_s}, indent=2))


def train_one_fold(config: TrainConfig, run_dir: Path, fold: int) -> dict:
    """Train fold `fold` (resumed if it has a checkpoint) and return its record; a signal names the cross-validation to resume."""
    fold_dir = run_dir / f"fold-{fold + 1}"
    fold_config = replace(config, folds=0, select="last", data=str(run_dir / "folds" / f"fold-{fold + 1}.parquet"), out=str(fold_dir),
                          init=fold_init(config.init, run_dir, fold))
    log.info("fold %d/%d: %s", fold + 1, config.folds, fold_dir)
    try:
        if checkpoint_path(fold_dir).is_file():
            train_single_run(fold_config, resume=str(fold_dir), explicit={})
        else:
            train_single_run(fold_config, overwrite=holds_run(fold_dir))
    except Interrupted:
        raise Interrupted(f"stopped by signal in fold {fold + 1} of {config.folds}; its checkpoint is in {fold_dir}. "
                          f"Continue the cross-validation with: bintally train --resume {run_dir}") from None
    return fold_record(fold, fold_dir)


def clear_folds(run_dir: Path) -> None:
    for old in [run_dir / "folds", *run_dir.glob("fold-*")]:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old)
    (run_dir / CV_FILE).unlink(missing_ok=True)


def write_folds(config: TrainConfig, run_dir: Path) -> TrainConfig:
    """Split train+val into the folds and write each fold's manifest (before any training); the config with its label space."""
    df, config = config_manifest(config)
    if "split" not in df or not df["split"].isin(POOL).any():
        raise DataError(manifest_name(df), "no train or val photos to cross-validate")
    folds = assign_folds(df, config.folds, config.seed)
    manifests = run_dir / "folds"
    manifests.mkdir(parents=True, exist_ok=True)
    config.save(run_dir / "config.json")
    save_split(df, run_dir)  # data split here (a folder, say): RUN/manifest.parquet, so the test split can be scored later
    for fold in range(config.folds):
        part = fold_manifest(df, folds, fold)
        write_manifest(part, manifests / f"fold-{fold + 1}.parquet", info=part.attrs["info"])
    return config


def save_ensemble(run_dir: Path, config: TrainConfig, cv: CrossValResult) -> None:
    """RUN/model: the K fold models as one ensemble (one shared backbone when they were trained on a frozen one)."""
    k = config.folds
    artifacts = [read_artifact(run_dir / f"fold-{fold + 1}") for fold in range(k)]
    transforms = {json.dumps(a.transform.to_dict(), sort_keys=True) for a in artifacts}
    if len(transforms) != 1:
        raise ConfigError(f"{run_dir}: the fold models were trained with different pre-processing")
    ensemble = CountingEnsemble.of([load_artifact_model(a) for a in artifacts])
    metrics = {"cross_validation": cv.summary, "folds": k}
    save_model(run_dir / "model", ensemble, artifacts[0].transform, config.tta, train_config=config.to_dict(), metrics=metrics)
