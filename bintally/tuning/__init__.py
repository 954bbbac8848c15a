"""Hyperparameter search: Optuna studies over training settings, shared through a database."""

from bintally.tuning.search import TuneConfig, TuneResult, tune

__all__ = ["TuneConfig", "TuneResult", "tune"]
