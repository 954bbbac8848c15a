"""The settings of the commands that run a model over photos: `PredictConfig` (bintally predict), `EvaluateConfig`
(bintally evaluate) and `CalibrateConfig` (bintally calibrate).

Evaluation's configs live here, not in bintally.evaluation, whose package imports pandas and torch: the command line
reads them at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bintally.models.artifact import MODEL_HELP
from bintally.progress import PROGRESS_HELP
from bintally.settings import Backend, setting

BACKEND_HELP = "Inference backend: PyTorch, or ONNX Runtime (a run is exported first, once)."
WORKERS_HELP = "Data-loader processes."
EVALUATE_SPLITS = ("train", "val", "test", "all")
CALIBRATE_SPLITS = ("train", "val")  # never test: that is for the final score


@dataclass
class PredictConfig:
    model: Path = setting(flag=("--model", "-m"), help=MODEL_HELP)
    as_json: bool = setting(False, flag=("--json",), help="Full output: probabilities of every count.")
    batch_size: int = setting(32, low=1, help="Photos per forward pass.")
    backend: Backend = setting(Backend.TORCH, help=BACKEND_HELP)
    progress: bool = setting(True, help=PROGRESS_HELP)


@dataclass
class EvaluateConfig:
    model: Path | None = setting(None, flag=("--model", "-m"), help=MODEL_HELP)
    data: Path | None = setting(None, help="Manifest, bucket folder or class folders. Default: the bundled sample.")
    split: str = setting("test", help="Split to score: train, val, test or all. Data without a split column is scored whole.")
    predictions: Path | None = setting(None, help="Recompute every metric from a saved predictions file instead.")
    json_out: Path | None = setting(None, flag=("--json",), help="Write every metric to this JSON file.")
    report: Path | None = setting(None, help="Write an HTML report with plots into this folder.")
    save_predictions: Path | None = setting(None, help="Save per-photo predictions (.csv or .parquet).")
    bootstrap: int = setting(1000, low=1, help="Bootstrap resamples for the 95% intervals.")
    verify_quantity: bool = setting(False, help="Also ABID's quantity verification: is there quantity q of SKU X in the bin? "
                                                "(questions from the photos' metadata; the threshold is chosen on the val split)")
    verify_seed: int = setting(0, low=0, help="Seed of the wrong quantities that --verify-quantity asks about.")
    workers: int = setting(2, low=0, help=WORKERS_HELP)
    backend: Backend = setting(Backend.TORCH, help=BACKEND_HELP)
    progress: bool = setting(True, help=PROGRESS_HELP)


@dataclass
class CalibrateConfig:
    model: Path = setting(flag=("--model", "-m"), help=MODEL_HELP)
    data: Path | None = setting(None, help="The split manifest the model was trained with (its validation photos are used). "
                                           "Not needed for a cross-validation run: it uses out-of-fold predictions.")
    split: str = setting("val", help="The split to fit on (never test: that is for the final score).")
    overwrite: bool = setting(False, help="Fit again over an existing calibration.")
    workers: int = setting(2, low=0, help=WORKERS_HELP)
    backend: Backend = setting(Backend.TORCH, help=BACKEND_HELP)
    progress: bool = setting(True, help=PROGRESS_HELP)

