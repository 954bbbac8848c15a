"""`bintally evaluate`, `bintally predict` and `bintally calibrate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from bintally.cli.app import app, command, echo_err, show_progress
from bintally.cli.options import settings_options
from bintally.cli.strict import exclusive
from bintally.inference.config import CALIBRATE_SPLITS, EVALUATE_SPLITS, CalibrateConfig, EvaluateConfig, PredictConfig


@command(app, "evaluate")
@exclusive("predictions", "model")
@exclusive("predictions", "data")
@exclusive("predictions", "save_predictions")
@settings_options(EvaluateConfig)
def evaluate_cmd(settings: dict):
    """Score a trained model: accuracy, RMSE, per-class metrics, calibration and confidence intervals (and, with
    --verify-quantity, ABID's quantity verification)."""
    from bintally.evaluation import evaluate

    config = EvaluateConfig(**settings)
    if config.split not in EVALUATE_SPLITS:
        raise typer.BadParameter(f"{config.split!r} is not one of {', '.join(EVALUATE_SPLITS)}", param_hint="--split")
    result = evaluate(model=config.model, data=config.data, split=None if config.split == "all" else config.split,
                      predictions=config.predictions, json_out=config.json_out, report=config.report, save_to=config.save_predictions,
                      resamples=config.bootstrap, workers=config.workers, backend=config.backend, progress=show_progress(config.progress),
                      verify=config.verify_quantity, seed=config.verify_seed)
    print_evaluation(result, config)


def print_evaluation(result, config: EvaluateConfig) -> None:
    m = result.metrics
    if result.info.get("no_split_column") and config.split != "all":
        echo_err(f"note: {config.data} has no split column, so all its photos were scored; to score one split, "
                 f"pass the split manifest (`bintally data split`, or the manifest.parquet in the training run)")
    for name, suffix in result.subset_names():
        if m[f"n{suffix}"]:
            low, high = m["ci95"][f"accuracy{suffix}"]
            typer.echo(f"{name:>5}: n={m[f'n{suffix}']:<5} accuracy {m[f'accuracy{suffix}']:.3f} [{low:.3f}, {high:.3f}]  "
                       f"RMSE {m[f'rmse{suffix}']:.3f}  MAE {m[f'mae{suffix}']:.3f}  within-1 {m[f'within1{suffix}']:.3f}  "
                       f"rel. error {m[f'rel_error{suffix}']:.3f}")
    typer.echo(f"ECE {m['ece']:.3f}")
    if "quantity_verification" in m:
        typer.echo(verification_line(m["quantity_verification"]))
    for written in (config.json_out, config.save_predictions, config.report and config.report / "index.html"):
        if written:
            typer.echo(f"wrote {written}")


def verification_line(v: dict) -> str:
    if not v["questions"]:
        return "quantity verification: no questions (none of the scored photos has SKU lines in its metadata)"
    auc = "n/a" if v["roc_auc"] != v["roc_auc"] else f"{v['roc_auc']:.3f}"
    return (f"quantity verification: {v['questions']} questions on {v['bins']} bins: accuracy {v['accuracy']:.3f} "
            f"(yes above {v['threshold']:.3f}, {v['threshold_from']})  ROC AUC {auc}")


@command(app, "predict")
@settings_options(PredictConfig)
def predict_cmd(
    settings: dict,
    images: Annotated[list[Path], typer.Argument(help="Photos to count, or folders of them.")],
):
    """Count the items in each photo (a folder: each photo under it). Photos that cannot be read are skipped, one line
    each (exit 1)."""
    from bintally.inference import Counter

    config = PredictConfig(**settings)
    counter = Counter.load(config.model, config.backend)
    results, failures = counter.count_paths(images, batch_size=config.batch_size, progress=show_progress(config.progress))
    if config.as_json:
        typer.echo(json.dumps(results, indent=2))
    else:
        for r in results:
            typer.echo(f"{r['image']}\t{r['label']}\t(p={r['confidence']:.2f}, expected {r['expected_count']:.2f})")
    for failure in failures:
        echo_err(f"skipped {failure}")
    if failures:
        echo_err(f"{len(results)} photo(s) counted, {len(failures)} could not be read")
        raise typer.Exit(1)


@command(app, "calibrate")
@settings_options(CalibrateConfig)
def calibrate_cmd(settings: dict):
    """Fit temperature scaling on validation photos and store it in the model, so its probabilities can be trusted."""
    from bintally.evaluation.calibration import calibrate_model, cross_validation_run

    config = CalibrateConfig(**settings)
    if config.split not in CALIBRATE_SPLITS:
        raise typer.BadParameter(f"{config.split!r}: fit on train or val (the test split is for the final score only)", param_hint="--split")
    if config.data is None and cross_validation_run(config.model) is None:
        raise typer.BadParameter("give the split manifest the model was trained with (e.g. RUN/manifest.parquet)", param_hint="--data")
    summary = calibrate_model(config.model, config.data, config.split, config.overwrite, workers=config.workers, backend=config.backend,
                              progress=show_progress(config.progress))
    typer.echo(f"temperature {summary['temperature']:g} fitted on {summary['photos']} photos of {summary['data']} "
               f"(split {summary['split']})")
    typer.echo(f"ECE {summary['ece_before']:.3f} -> {summary['ece_after']:.3f}   NLL {summary['nll_before']:.3f} -> "
               f"{summary['nll_after']:.3f}   (the counts it reports do not change; their probabilities do)")
