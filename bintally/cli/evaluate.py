"""`bintally evaluate` and `bintally predict`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from bintally.cli.app import Opt, ProgressOpt, app, command, echo_err, show_progress
from bintally.cli.options import choice
from bintally.io import check_output_file, check_output_folder
from bintally.models.artifact import MODEL_HELP
from bintally.settings import Backend

BackendOpt = Annotated[choice(Backend), Opt(help="Inference backend: PyTorch, or ONNX Runtime (a run is exported first, once).")]


@command(app, "evaluate")
def evaluate_cmd(
    model: Annotated[Optional[Path], Opt("--model", "-m", help=MODEL_HELP)] = None,
    data: Annotated[Optional[Path], Opt(help="Manifest, bucket folder or class folders. Default: the bundled sample.")] = None,
    split: Annotated[str, Opt(help="Split to score: train, val, test or all. Data without a split column is scored whole.")] = "test",
    predictions: Annotated[Optional[Path], Opt(help="Recompute every metric from a saved predictions file instead.")] = None,
    json_out: Annotated[Optional[Path], Opt("--json", help="Write every metric to this JSON file.")] = None,
    report: Annotated[Optional[Path], Opt(help="Write an HTML report with plots into this folder.")] = None,
    save_predictions: Annotated[Optional[Path], Opt(help="Save per-photo predictions (.csv or .parquet).")] = None,
    bootstrap: Annotated[int, Opt(min=1, help="Bootstrap resamples for the 95% intervals.")] = 1000,
    workers: Annotated[int, Opt(min=0, help="Data-loader processes.")] = 2,
    backend: BackendOpt = Backend.TORCH.value,
    progress: ProgressOpt = True,
):
    """Score a trained model: accuracy, RMSE, per-class metrics, calibration and confidence intervals."""
    from bintally.evaluation import evaluate

    if split not in ("train", "val", "test", "all"):
        raise typer.BadParameter(f"{split!r} is not one of train, val, test, all", param_hint="--split")
    if json_out:
        check_output_file(json_out, (".json",))
    if save_predictions:
        check_output_file(save_predictions, (".csv", ".parquet"))
    if report:
        check_output_folder(report)
    options = {"resamples": bootstrap} | ({} if predictions else {"workers": workers, "backend": backend, "progress": show_progress(progress)})
    result = evaluate(model=model, data=data, split=None if split == "all" else split, predictions=predictions,
                      json_out=json_out, report=report, save_to=save_predictions, **options)
    m = result.metrics
    if result.info.get("no_split_column") and split != "all":
        echo_err(f"note: {data} has no split column, so all its photos were scored; to score one split, "
                 f"pass the split manifest (`bintally data split`, or the manifest.parquet in the training run)")
    for name, suffix in result.subset_names():
        if m[f"n{suffix}"]:
            low, high = m["ci95"][f"accuracy{suffix}"]
            typer.echo(f"{name:>4}: n={m[f'n{suffix}']:<5} accuracy {m[f'accuracy{suffix}']:.3f} [{low:.3f}, {high:.3f}]  "
                       f"RMSE {m[f'rmse{suffix}']:.3f}  MAE {m[f'mae{suffix}']:.3f}  within-1 {m[f'within1{suffix}']:.3f}")
    typer.echo(f"ECE {m['ece']:.3f}")
    for written in (json_out, save_predictions, report and report / "index.html"):
        if written:
            typer.echo(f"wrote {written}")


@command(app, "predict")
def predict_cmd(
    images: Annotated[list[Path], typer.Argument(help="Photos to count.")],
    model: Annotated[Path, Opt("--model", "-m", help=MODEL_HELP)],
    as_json: Annotated[bool, Opt("--json", help="Full output: probabilities of every count.")] = False,
    batch_size: Annotated[int, Opt(min=1, help="Photos per forward pass.")] = 32,
    backend: BackendOpt = Backend.TORCH.value,
    progress: ProgressOpt = True,
):
    """Count the items in each photo. Photos that cannot be read are reported one per line (exit 1)."""
    from bintally.inference import Counter

    counter = Counter.load(model, backend)
    results, failures = counter.count_paths(images, batch_size=batch_size, progress=show_progress(progress))
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            typer.echo(f"{r['image']}\t{r['label']}\t(p={r['confidence']:.2f}, expected {r['expected_count']:.2f})")
    for failure in failures:
        echo_err(f"{failure}")
    if failures:
        echo_err(f"{len(results)} photo(s) counted, {len(failures)} could not be read")
        raise typer.Exit(1)


@command(app, "calibrate")
def calibrate_cmd(
    model: Annotated[Path, Opt("--model", "-m", help=MODEL_HELP)],
    data: Annotated[Optional[Path], Opt(help="The split manifest the model was trained with (its validation photos are used). "
                                             "Not needed for a cross-validation run: it uses out-of-fold predictions.")] = None,
    split: Annotated[str, Opt(help="The split to fit on (never test: that is for the final score).")] = "val",
    overwrite: Annotated[bool, Opt(help="Fit again over an existing calibration.")] = False,
    workers: Annotated[int, Opt(min=0, help="Data-loader processes.")] = 2,
    backend: BackendOpt = Backend.TORCH.value,
    progress: ProgressOpt = True,
):
    """Fit temperature scaling on validation photos and store it in the model, so its probabilities can be trusted."""
    from bintally.evaluation.calibration import calibrate_model, cross_validation_run

    if split not in ("train", "val"):
        raise typer.BadParameter(f"{split!r}: fit on train or val (the test split is for the final score only)", param_hint="--split")
    if data is None and cross_validation_run(model) is None:
        raise typer.BadParameter("give the split manifest the model was trained with (e.g. RUN/manifest.parquet)", param_hint="--data")
    summary = calibrate_model(model, data, split, overwrite, workers=workers, backend=backend, progress=show_progress(progress))
    typer.echo(f"temperature {summary['temperature']:g} fitted on {summary['photos']} photos of {summary['data']} "
               f"(split {summary['split']})")
    typer.echo(f"ECE {summary['ece_before']:.3f} -> {summary['ece_after']:.3f}   NLL {summary['nll_before']:.3f} -> "
               f"{summary['nll_after']:.3f}   (the counts it reports do not change; their probabilities do)")
