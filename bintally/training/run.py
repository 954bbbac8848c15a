"""`bintally train`'s one entry point: K-fold cross-validation (`folds` >= 2) or a single run."""

from __future__ import annotations

import json
from pathlib import Path

from bintally.training.config import TrainConfig
from bintally.training.crossval import CrossValResult, cross_validate
from bintally.training.engine import TrainResult, train_single_run


def train(config: TrainConfig, resume: str | None = None, explicit: dict | None = None,
          overwrite: bool = False) -> TrainResult | CrossValResult:
    """Train (or resume) a run: one model, or with `folds` >= 2 one per fold and their ensemble.

    `explicit` holds the settings the user gave (a resume may change some of them); a new run
    refuses a directory that holds another run unless `overwrite`.
    """
    if cross_validating(config, resume):
        return cross_validate(config, resume, explicit, overwrite)
    return train_single_run(config, resume, explicit, overwrite=overwrite)


def cross_validating(config: TrainConfig, resume: str | None) -> bool:
    """A new run with --folds K, or the resume of a run whose config.json has folds K (K >= 2)."""
    if resume is None:
        return config.folds >= 2
    try:
        return json.loads((Path(resume) / "config.json").read_bytes()).get("folds", 0) >= 2
    except (OSError, ValueError, AttributeError):
        return False  # resume() names what is wrong with the run
