"""`bintally train` and `bintally tune`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from bintally.cli.app import Opt, ProgressOpt, app, command, echo_stopped, int_list, show_progress, split_list
from bintally.labels import DECODINGS
from bintally.models.config import FEATURES, HEADS
from bintally.training.config import BALANCING, MODES, OPTIMIZERS, OVERFLOW, PRESETS, SCHEDULES, SELECT


def choice(values):
    """A type whose values are listed in -h and checked by the parser."""
    return Literal[tuple(values)]


PRESET_HELP = "Named recipe: " + ", ".join(PRESETS) + "."


@command(app, "train")
def train_cmd(
    data: Annotated[Optional[str], Opt(help="Split manifest, bucket folder, class folders or CSV. Default: the bundled sample.")] = None,
    preset: Annotated[Optional[choice(PRESETS)], Opt(help=PRESET_HELP)] = None,
    config_file: Annotated[Optional[Path], Opt("--config", help="JSON settings (e.g. from bintally tune); flags override them.")] = None,
    out: Annotated[Optional[str], Opt(help="Run directory. Default: a new numbered one, runs/train/run-NNN.")] = None,
    resume: Annotated[Optional[Path], Opt(help="Continue the run in this directory from its last checkpoint.")] = None,
    overwrite: Annotated[bool, Opt("--overwrite", help="Replace the run already in --out (it is deleted first).")] = False,
    backbone: Annotated[Optional[str], Opt(help="efficientnet_lite0/1/2, resnet18/34/50/101 or any timm model name.")] = None,
    head: Annotated[Optional[choice(HEADS)], Opt(help="Head on the backbone's features.")] = None,
    features: Annotated[Optional[choice(FEATURES)], Opt(help="What the head reads: pooled final features, "
                                                             "or the stride-16 map through a small conv head.")] = None,
    weights: Annotated[Optional[str], Opt(help="Backbone weights file (.pt/.pth state dict).")] = None,
    init: Annotated[Optional[str], Opt(help="Start from a trained model's weights (a run or model folder; with --folds, "
                                            "a cross-validation run over the same folds).")] = None,
    pretrained: Annotated[Optional[bool], Opt("--pretrained/--random-init", help="Start from shipped ImageNet weights.")] = None,
    min_count: Annotated[Optional[int], Opt(min=0, help="Smallest count with its own class (default: the manifest's split, else 0).")] = None,
    max_count: Annotated[Optional[int], Opt(min=0, help="Largest count with its own class (default: the manifest's split, else 5).")] = None,
    overflow: Annotated[Optional[choice(OVERFLOW)], Opt(help="class: counts above max-count form one class; exclude: learn counts min..max only.")] = None,
    decode: Annotated[Optional[choice(("auto", *DECODINGS))], Opt(help="Count from probabilities (auto: median for ordinal, else argmax).")] = None,
    dropout: Annotated[Optional[float], Opt(min=0.0, max=0.99, help="Dropout before the head's layers.")] = None,
    mode: Annotated[Optional[choice(MODES)], Opt(help="frozen (head on cached features), partial or full fine-tuning.")] = None,
    unfreeze: Annotated[Optional[int], Opt(min=0, help="partial: how many top backbone stages to train.")] = None,
    image_size: Annotated[Optional[int], Opt(min=16, max=2048, help="Input size in pixels.")] = None,
    epochs: Annotated[Optional[int], Opt(min=1)] = None,
    batch_size: Annotated[Optional[int], Opt(min=1, help="Per process.")] = None,
    optimizer: Annotated[Optional[choice(OPTIMIZERS)], Opt()] = None,
    lr: Annotated[Optional[float], Opt(min=0.0, help="Head learning rate.")] = None,
    backbone_lr_scale: Annotated[Optional[float], Opt(min=0.0, help="Backbone lr = lr x this.")] = None,
    weight_decay: Annotated[Optional[float], Opt(min=0.0)] = None,
    schedule: Annotated[Optional[choice(SCHEDULES)], Opt(help="cosine, sgdr (warm restarts) or step; all with warm-up.")] = None,
    momentum: Annotated[Optional[float], Opt(min=0.0, max=1.0, help="SGD momentum.")] = None,
    warmup_epochs: Annotated[Optional[float], Opt(min=0.0)] = None,
    restart_epochs: Annotated[Optional[int], Opt(min=1, help="sgdr: length of the first cycle (doubles each restart).")] = None,
    step_epochs: Annotated[Optional[int], Opt(min=1, help="step: decay every this many epochs.")] = None,
    step_gamma: Annotated[Optional[float], Opt(min=0.0, max=1.0, help="step: decay factor.")] = None,
    label_smoothing: Annotated[Optional[float], Opt(min=0.0, max=1.0)] = None,
    balance: Annotated[Optional[choice(BALANCING)], Opt(help="none, sampler (class-balanced sampling) or weights (loss weights).")] = None,
    ema: Annotated[Optional[float], Opt(min=0.0, max=1.0, help="EMA decay of the weights, e.g. 0.999; 0 = off.")] = None,
    select: Annotated[Optional[choice(SELECT)], Opt(help="Keep the epoch best on validation (counts 0-5), or the last epoch.")] = None,
    folds: Annotated[Optional[int], Opt(min=0, max=20, help="K >= 2: grouped K-fold cross-validation over train+val; "
                                                            "RUN/model is the ensemble of the K fold models.")] = None,
    amp: Annotated[Optional[bool], Opt("--amp/--no-amp", help="bf16 autocast (default: on for GPUs only).")] = None,
    compile: Annotated[Optional[bool], Opt("--compile/--no-compile", help="torch.compile the model.")] = None,
    channels_last: Annotated[Optional[bool], Opt("--channels-last/--no-channels-last")] = None,
    tta: Annotated[Optional[bool], Opt("--tta/--no-tta", help="Average with the mirrored photo when evaluating.")] = None,
    workers: Annotated[Optional[int], Opt(min=0, help="Data-loader processes.")] = None,
    device: Annotated[Optional[str], Opt(help="auto, cpu, cuda, cuda:1 ...")] = None,
    seed: Annotated[Optional[int], Opt(min=0)] = None,
    max_steps: Annotated[Optional[int], Opt(min=1, help="Stop after this many steps (smoke runs).")] = None,
    profile: Annotated[Optional[bool], Opt("--profile", help="Write a PyTorch profiler trace to RUN/profile.")] = None,
    progress: Annotated[Optional[bool], Opt("--progress/--no-progress", help="Show progress bars (--no-progress hides every bar).")] = None,
):
    """Train a counting model (run under torchrun for DistributedDataParallel)."""
    flags = {k: v for k, v in locals().items() if k not in ("resume", "preset", "config_file", "overwrite") and v is not None}
    from bintally.training import CrossValResult, Interrupted, resolve_config, train
    from bintally.training.config import read_config_file

    if progress is False:
        show_progress(False)
    from_file = read_config_file(config_file) if config_file else {}
    preset = preset or from_file.pop("preset", None)
    explicit = from_file | flags
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
