"""Evaluation: metrics over counts, computed the same way everywhere, and the evaluation report."""

from bintally.evaluation.evaluate import Evaluation, evaluate, evaluate_model, evaluate_predictions, evaluate_saved
from bintally.evaluation.metrics import count_metrics
from bintally.evaluation.predictions import load_predictions, save_predictions

__all__ = ["Evaluation", "count_metrics", "evaluate", "evaluate_model", "evaluate_predictions", "evaluate_saved",
           "load_predictions", "save_predictions"]
