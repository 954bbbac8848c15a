"""Hyperparameter search: Optuna studies over training settings, shared through a database.

Optuna and torch load on first use of `tune` or `TuneResult`.
"""

from importlib import import_module

from bintally.tuning.config import TuneConfig

__all__ = ["TuneConfig", "TuneResult", "tune"]


def __getattr__(name: str):
    if name in ("TuneResult", "tune"):
        return getattr(import_module("bintally.tuning.search"), name)
    raise AttributeError(f"module 'bintally.tuning' has no attribute {name!r}")
