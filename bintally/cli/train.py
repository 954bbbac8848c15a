"""`bintally train` and `bintally tune`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from bintally.cli.app import Opt, app, command, echo_stopped, show_progress
from bintally.cli.options import settings_options
from bintally.cli.strict import exclusive
from bintally.training.config import TrainConfig
from bintally.tuning.config import TuneConfig


@command(app, "train")
@exclusive("resume", "overwrite")
@exclusive("resume", "out")
@exclusive("resume", "preset")
@settings_options(TrainConfig, given_only=True)
def train_cmd(
    settings: dict,
    config_file: Annotated[Optional[Path], Opt("--config", help="JSON settings (e.g. from bintally tune); flags override them.")] = None,
    resume: Annotated[Optional[Path], Opt(help="Continue the run in this directory from its last checkpoint.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace the run already in --out (it is deleted first).")] = False,
):
    """Train a counting model (run under torchrun for DistributedDataParallel)."""
    from bintally.training import CrossValResult, Interrupted, resolve_config, train
    from bintally.training.config import read_config_file

    if settings.get("progress") is False:
        show_progress(False)
    from_file = read_config_file(config_file) if config_file else {}
    file_preset = from_file.pop("preset", None)
    preset = settings.pop("preset", None) or file_preset  # --preset over the file's
    explicit = from_file | settings
    config = resolve_config(preset, **explicit)
    try:
        result = train(config, resume=str(resume) if resume else None, explicit=explicit, overwrite=overwrite)
    except Interrupted as e:
        echo_stopped(str(e))
        raise typer.Exit(130) from None
    except KeyboardInterrupt:  # before the run started, or as it ended (then it finished and saved everything first)
        echo_stopped("stopped by signal; a run that had started kept its last checkpoint (bintally train --resume RUN)")
        raise typer.Exit(130) from None
    if isinstance(result, CrossValResult):
        echo_cross_validation(result.to_json())
        return
    if result.already_finished:
        typer.echo(f"run {result.run} is already finished ({result.epochs_done} epochs); nothing to do. "
                   f"To train longer: bintally train --resume {result.run} --epochs N (N > {result.epochs_done})")
        return
    final = result.final
    low, high = result.labels.min_count, result.labels.max_count
    typer.echo(f"run: {result.run}  ({result.wall_time_s} s)")
    typer.echo(f"validation (last epoch): accuracy {final['val_accuracy']:.3f}, RMSE {final['val_rmse']:.3f} on all {final['val_n']} photos; "
               f"accuracy {final[f'val_accuracy_0_{high}']:.3f}, RMSE {final[f'val_rmse_0_{high}']:.3f} on counts {low}-{high}")
    findings = result.health["findings"]
    if findings:  # each was printed when it was found
        typer.echo(f"health: {len(findings)} finding(s), listed in {Path(result.run) / 'health.json'}")


def echo_cross_validation(cv: dict) -> None:
    """Each fold's validation accuracy and RMSE on counts 0-5, then their mean and standard deviation."""
    typer.echo(f"cross-validation: {cv['run']}  ({cv['k']} folds; each fold's last epoch, scored on that fold)")
    typer.echo(f"{'fold':>6} {'photos':>7} {'acc 0-5':>8} {'RMSE 0-5':>9} {'acc 1-5':>8} {'acc all':>8}")
    for f in cv["folds"]:
        typer.echo(f"{f['fold']:>6} {f['val_n']:>7} {f['val_accuracy_0_5']:>8.3f} {f['val_rmse_0_5']:>9.3f} "
                   f"{f['val_accuracy_1_5']:>8.3f} {f['val_accuracy']:>8.3f}")
    m = cv["summary"]
    typer.echo(f"{'mean':>6} {'':>7} {m['val_accuracy_0_5']['mean']:>8.3f} {m['val_rmse_0_5']['mean']:>9.3f} "
               f"{m['val_accuracy_1_5']['mean']:>8.3f} {m['val_accuracy']['mean']:>8.3f}")
    typer.echo(f"{'std':>6} {'':>7} {m['val_accuracy_0_5']['std']:>8.3f} {m['val_rmse_0_5']['std']:>9.3f} "
               f"{m['val_accuracy_1_5']['std']:>8.3f} {m['val_accuracy']['std']:>8.3f}")
    typer.echo(f"model: {Path(cv['run']) / 'model'} (the ensemble of the {cv['k']} fold models)")


@command(app, "tune")
@settings_options(TuneConfig)
def tune_cmd(
    settings: dict,
    config_file: Annotated[Optional[Path], Opt("--config", help="JSON of fixed training settings applied over the preset.")] = None,
):
    """Search training settings with Optuna (TPE, pruning on per-epoch validation accuracy)."""
    from bintally.io import check_output_folder
    from bintally.training import Interrupted
    from bintally.training.config import read_config_file
    from bintally.tuning import tune

    show_progress(settings["progress"])
    config = TuneConfig(**settings, fixed=read_config_file(config_file) if config_file else {})
    check_output_folder(config.study_dir)
    try:
        result = tune(config)
    except (KeyboardInterrupt, Interrupted):
        echo_stopped(f"stopped; the finished trials are kept in {config.storage_url}. Run the same command to go on.")
        raise typer.Exit(130) from None
    typer.echo(f"study {result.study} ({result.storage}): {result.trials} trials, {result.complete} complete, {result.pruned} pruned")
    if result.best_config:
        typer.echo(f"best validation accuracy (counts 0-{config.max_count}): {result.best_value:.4f} with {json.dumps(result.best_params)}")
        typer.echo(f"train it: bintally train --config {result.best_config}")
    for name, path in result.outputs.items():
        typer.echo(f"{name}: {path}")
