"""`bintally train` and `bintally tune`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from bintally.cli.app import Opt, ProgressOpt, app, command, echo_stopped, int_list, show_progress, split_list
from bintally.cli.options import choice, settings_options
from bintally.training.config import MODES, PRESETS, TrainConfig


@command(app, "train")
@settings_options(TrainConfig, given_only=True)
def train_cmd(
    settings: dict,
    config_file: Annotated[Optional[Path], Opt("--config", help="JSON settings (e.g. from bintally tune); flags override them.")] = None,
    resume: Annotated[Optional[Path], Opt(help="Continue the run in this directory from its last checkpoint.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace the run already in --out (it is deleted first).")] = False,
):
    """Train a counting model (run under torchrun for DistributedDataParallel)."""
    from bintally.training import Interrupted, resolve_config, train
    from bintally.training.config import read_config_file

    if settings.get("progress") is False:
        show_progress(False)
    from_file = read_config_file(config_file) if config_file else {}
    preset = settings.pop("preset", None) or from_file.pop("preset", None)
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
    if result.already_finished:
        typer.echo(f"run {result.run} is already finished ({result.epochs_done} epochs); nothing to do. "
                   f"To train longer: bintally train --resume {result.run} --epochs N (N > {result.epochs_done})")
        return
    if result.cross_validation is not None:
        echo_cross_validation(result.cross_validation)
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
def tune_cmd(
    data: Annotated[Optional[str], Opt(help="Split manifest, bucket folder, class folders or CSV. Default: the bundled sample.")] = None,
    n_trials: Annotated[int, Opt(min=1, help="Trials to add to the study in this call (all workers together).")] = 50,
    timeout: Annotated[Optional[float], Opt(min=0.001, help="Stop starting new trials after this many seconds.")] = None,
    study: Annotated[str, Opt(help="Study name; the same name resumes the study.")] = "bintally",
    storage: Annotated[Optional[str], Opt(help="SQLAlchemy URL, e.g. postgresql://host/db. Default: sqlite:///OUT/optuna.db.")] = None,
    out: Annotated[str, Opt(help="Outputs go to OUT/STUDY/.")] = "runs/tune",
    jobs: Annotated[int, Opt(min=1, help="Local worker processes sharing the study.")] = 1,
    pruner: Annotated[choice(("median", "hyperband", "none")), Opt(help="Stops unpromising trials early.")] = "median",
    mode: Annotated[choice(MODES), Opt(help="frozen (heads on cached features), partial or full.")] = "frozen",
    preset: Annotated[Optional[choice(PRESETS)], Opt(help="Fixed settings the search leaves alone: " + ", ".join(PRESETS) + ".")] = "fast",
    config_file: Annotated[Optional[Path], Opt("--config", help="JSON of fixed training settings applied over the preset.")] = None,
    backbones: Annotated[str, Opt(help="Comma-separated backbones to try.")] = "efficientnet_lite0",
    image_sizes: Annotated[str, Opt(help="Comma-separated image sizes to try.")] = "224",
    features: Annotated[str, Opt(help="Comma-separated: pooled and/or stride16 (the spatial head on the cached stride-16 map).")] = "pooled",
    min_epochs: Annotated[int, Opt(min=1)] = 5,
    max_epochs: Annotated[int, Opt(min=1)] = 30,
    max_count: Annotated[int, Opt(min=0, help="Largest count with its own class.")] = 5,
    seed: Annotated[int, Opt(min=0)] = 0,
    progress: ProgressOpt = True,
):
    """Search training settings with Optuna (TPE, pruning on per-epoch validation accuracy)."""
    from bintally.io import check_output_folder
    from bintally.training import Interrupted
    from bintally.training.config import read_config_file
    from bintally.tuning import TuneConfig, tune

    sizes = int_list(image_sizes, "--image-sizes")
    names = split_list(backbones)
    if not names:
        raise typer.BadParameter("give at least one backbone", param_hint="--backbones")
    fixed = read_config_file(config_file) if config_file else {}
    config = TuneConfig(data=data, study=study, storage=storage, out=out, n_trials=n_trials, timeout=timeout, jobs=jobs,
                        pruner=pruner, mode=mode, preset=preset, fixed=fixed, backbones=names, image_sizes=sizes,
                        features=split_list(features),
                        min_epochs=min_epochs, max_epochs=max_epochs, max_count=max_count, seed=seed, progress=show_progress(progress))
    check_output_folder(config.study_dir)
    try:
        result = tune(config)
    except (KeyboardInterrupt, Interrupted):
        echo_stopped(f"stopped; the finished trials are kept in {config.storage_url}. Run the same command to go on.")
        raise typer.Exit(130) from None
    typer.echo(f"study {result.study} ({result.storage}): {result.trials} trials, {result.complete} complete, {result.pruned} pruned")
    if result.best_config:
        typer.echo(f"best validation accuracy (counts 0-{max_count}): {result.best_value:.4f} with {json.dumps(result.best_params)}")
        typer.echo(f"train it: bintally train --config {result.best_config}")
    for name, path in result.outputs.items():
        typer.echo(f"{name}: {path}")
