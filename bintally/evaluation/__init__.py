"""Evaluation: metrics over counts, computed the same way everywhere."""

from bintally.evaluation.metrics import count_metrics

__all__ = ["count_metrics"]
