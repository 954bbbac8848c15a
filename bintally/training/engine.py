"""A single training run, a readable recipe from a split manifest to a counting model.

One loop serves every mode: in `frozen` mode it trains the head on cached backbone features,
in `partial` and `full` mode it trains on the photos themselves. Runs under torchrun for
DistributedDataParallel. SIGTERM/SIGINT write a checkpoint before exit; `--resume` continues.
`bintally.training.run.train` chooses between this and K-fold cross-validation.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from bintally.data.dataset import BinPhotos, photo_loader
from bintally.data.transforms import TransformConfig
from bintally.errors import ConfigError
from bintally.io import atomic_path, check_output_folder
from bintally.labels import LabelSpace
from bintally.models.artifact import RUN_SUBDIR, load_weights, read_artifact
from bintally.models.artifact import save_model as save_artifact
from bintally.models.backbones import weights_description
from bintally.models.model import CountingModel, weights_problem
from bintally.training.checkpoint import check_checkpoint_fits, checkpoint_path, load_checkpoint, restore_checkpoint, save_checkpoint
from bintally.training.config import TrainConfig
from bintally.training.data import check_training_data, config_manifest, save_split
from bintally.training.distributed import Dist, any_rank, cleanup, pick_device, setup_distributed
from bintally.training.features import cached_features
from bintally.training.loop import EpochStats, Trainer, class_weights, loader_workers, out_of_steps, selection_score, train_one_epoch, validate
from bintally.training.rundir import RunDir, resumed_config
from bintally.training.state import TrainState, freeze_for_mode

log = logging.getLogger("bintally.train")
# end-of-epoch checkpoints come at most this often (a signal still checkpoints at once): frozen-mode epochs take under a second
CHECKPOINT_INTERVAL_S = 30


@dataclass
class TrainResult:
    run: str
    best_val: list | None
    final: dict
    health: dict
    wall_time_s: float
    world_size: int
    model: CountingModel | None
    labels: LabelSpace = field(default_factory=LabelSpace)
    already_finished: bool = False  # --resume of a run that had nothing left to do
    epochs_done: int = 0


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint."""


@dataclass
class StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step; the old handlers come back afterwards.

    A signal that arrives after the last step check (during the final evaluation, or just before an
    `on_epoch` callback ends the run) is not lost: once the run has saved, it goes to the old handler
    if that is Python code (tune's, or KeyboardInterrupt for SIGINT), and otherwise becomes
    `Interrupted`, so the process still exits with a message rather than dying of the signal.
    """

    signum: int | None = None
    previous: dict | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> "StopFlag":
        in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
        self.previous = {sig: signal.signal(sig, self.handle) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main_thread else {}
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        if not self.requested or isinstance(exc, Interrupted):  # Interrupted: the loop already stopped for it
            return
        if callable(self.previous.get(self.signum)):  # tune's handler, or KeyboardInterrupt for SIGINT
            signal.raise_signal(self.signum)
        elif exc is None:  # SIG_DFL would kill the process without a word
            raise Interrupted(f"stopped by signal {signal.Signals(self.signum).name} after the run finished; its results are saved")

    def handle(self, signum, frame) -> None:
        self.signum = signum


# ---------------------------------------------------------------- the run directory


@dataclass
class Run:
    dir: Path
    main: bool
    folder: RunDir | None = None  # the locked run directory (main process only)

    def write_setup(self, config: TrainConfig, df: pd.DataFrame) -> None:
        """RUN/config.json and, for a split made here, RUN/manifest.parquet; RUN/checkpoints/ is ready."""
        if self.main:
            (self.dir / "checkpoints").mkdir(exist_ok=True)
            config.save(self.dir / "config.json")
            save_split(df, self.dir)

    def write_json(self, name: str, obj) -> None:
        if self.main:
            with atomic_path(self.dir / name) as tmp:
                tmp.write_text(json.dumps(obj, indent=2, default=str))

    def append_metrics(self, row: dict) -> None:
        if self.main:
            with open(self.dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    def saved(self) -> None:
        if self.folder is not None:
            self.folder.started()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def finished_result(run_dir: Path, checkpoint: dict, config: TrainConfig) -> TrainResult | None:
    """A result for `--resume` of a run with nothing left to do (its files are left exactly as they are)."""
    if checkpoint["epoch"] < config.epochs or checkpoint["step"] != 0:
        return None
    try:
        saved = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        saved = {}
    return TrainResult(run=str(run_dir), best_val=checkpoint.get("best"), final=saved.get("final", {}), health=saved.get("health", {}),
                       wall_time_s=0.0, world_size=1, model=None, labels=config.model.labels, already_finished=True,
                       epochs_done=checkpoint["epoch"])


def shared_path(path: Path | None, d: Dist) -> Path:
    """Rank 0's run directory, on every rank."""
    if not d.enabled:
        return path
    box = [str(path) if d.main else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


EpochCallback = Callable[[int, dict], None]


def train_single_run(config: TrainConfig, resume: str | None = None, explicit: dict | None = None,
                     on_epoch: EpochCallback | None = None, overwrite: bool = False) -> TrainResult:
    """Train (or resume) one counting model; return the final validation metrics and the run directory.

    A new run refuses a directory that holds another run unless `overwrite`. Everything that can be
    refused (settings, data, output location) is checked before the run directory is made.
    `on_epoch(epoch, val_metrics)` is called after each epoch's validation (hyperparameter search
    uses it to report and prune); an exception it raises ends the run.
    """
    d = setup_distributed(config.device)
    folder, ended_cleanly = None, False
    try:
        if resume is not None:
            folder = RunDir.resume(resume) if d.main else None
            config = resumed_config(Path(resume), explicit or {})
            checkpoint = load_checkpoint(checkpoint_path(Path(resume)))
            done = finished_result(Path(resume), checkpoint, config)
            if done is not None:
                ended_cleanly = True
                return done
        else:
            checkpoint = None
            if config.out is not None and d.main:
                check_output_folder(config.out)
        setup = prepare(config, d)
        if checkpoint is not None:
            check_checkpoint_fits(checkpoint, checkpoint_path(Path(resume)), setup.model)
        if resume is None and d.main:
            folder = RunDir.new(config.out, overwrite)
        run_dir = shared_path(folder.path if folder else None, d)
        setup.config = replace(setup.config, out=str(run_dir))
        with StopFlag() as stop:
            result = fit(setup, Run(run_dir, d.main, folder), checkpoint, d, stop, on_epoch)
        ended_cleanly = True
        return result
    finally:
        if folder is not None:  # a run stopped by a signal has saved a checkpoint, so it is kept
            folder.close(failed=not ended_cleanly)
        cleanup(d)


# ---------------------------------------------------------------- before the first step


@dataclass
class Setup:
    """What a run needs before its first step, all checked before anything is written."""

    config: TrainConfig
    model: CountingModel
    df: pd.DataFrame
    parts: dict[str, pd.DataFrame]
    transform: TransformConfig


def prepare(config: TrainConfig, d: Dist) -> Setup:
    torch.manual_seed(config.seed)
    df, config = config_manifest(config)
    model = CountingModel(config.model)  # validates backbone, head and weights
    if config.init is not None:
        start_from(model, config.init)
    parts = check_training_data(df, config.model.labels)
    per_process = len(parts["train"]) // d.world_size
    if per_process < config.batch_size:
        raise ConfigError(f"batch size {config.batch_size} is larger than the train split per process ({per_process} photos); "
                          f"use --batch-size {max(per_process, 1)} or less, or more photos")
    transform = TransformConfig(config.image_size, model.normalization.mean, model.normalization.std)
    return Setup(config, model, df, parts, transform)


def start_from(model: CountingModel, path: str) -> None:
    """--init: the weights of a trained model (same backbone, features, head and label space) as the starting point."""
    artifact = read_artifact(path)
    mine, theirs = model.config, artifact.model
    for name in ("backbone", "features", "head", "labels", "members"):
        if getattr(mine, name) != getattr(theirs, name):
            raise ConfigError(f"--init {path}: its {name} is {getattr(theirs, name)!r}, this run's is {getattr(mine, name)!r}")
    state = load_weights(artifact)
    problem = weights_problem(model.state_dict(), state)
    if problem:
        raise ConfigError(f"--init {path}: its weights do not fit this model ({problem})")
    model.load_state_dict(state)


def build_trainer(setup: Setup, d: Dist, progress: bool) -> Trainer:
    """Freeze what the mode keeps frozen, place the model, and make the datasets (cached features in frozen mode)."""
    config, model, parts = setup.config, setup.model, setup.parts
    frozen_modules = freeze_for_mode(model, config)
    model.to(d.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    train_labels = parts["train"]["label"].to_numpy(dtype=int)
    if config.mode == "frozen":
        views = cached_features(model, parts, setup.transform, config, d)
        train_set, val_set, trained = views.train_dataset(config.seed), views.dataset("val"), model.head
    else:
        train_set = BinPhotos(parts["train"], setup.transform, train=True, seed=config.seed)
        val_set, trained = BinPhotos(parts["val"], setup.transform, train=False), model
    if d.enabled:
        trained = DistributedDataParallel(trained)
    forward = torch.compile(trained) if config.compile else trained
    amp = d.device.type == "cuda" if config.amp is None else config.amp
    weights = class_weights(train_labels, config.model.n_classes).to(d.device) if config.balance == "weights" else None
    return Trainer(config, d, amp, train_set, train_labels, parts["val"], photo_loader(val_set, config.batch_size * 2, loader_workers(config)),
                   trained=trained, forward=forward, frozen_modules=frozen_modules,
                   trainable=[p for p in model.parameters() if p.requires_grad], loss_weights=weights,
                   steps_per_epoch=len(train_labels) // d.world_size // config.batch_size, progress=progress)


def prepare_features(config: TrainConfig) -> None:
    """Compute (or find) the frozen-feature cache that a frozen-mode run of this config reads."""
    d = Dist(device=pick_device(config.device))
    setup = prepare(config, d)
    cached_features(setup.model.to(d.device), setup.parts, setup.transform, setup.config, d)


# ---------------------------------------------------------------- the loop over epochs


def fit(setup: Setup, run: Run, checkpoint: dict | None, d: Dist, stop: StopFlag,
        on_epoch: EpochCallback | None = None) -> TrainResult:
    """Go on from the checkpoint (if any): each epoch trains, validates, keeps the selected model and checkpoints."""
    started, config = time.time(), setup.config
    run.write_setup(config, setup.df)
    trainer = build_trainer(setup, d, progress=run.main and config.progress)
    state = TrainState.create(setup.model, config, trainer.steps_per_epoch)
    if checkpoint is not None:
        restore_checkpoint(state, checkpoint, checkpoint_path(run.dir))
        log.info("resumed %s at epoch %d, step %d", run.dir, state.epoch + 1, state.step)
    if any_rank(stop.requested, d):  # the signal came while the data or features were being prepared
        stop_now(state, config, run)
    profiler = make_profiler(config, run) if run.main else None
    clock = CheckpointClock()
    metrics: dict = {}
    for epoch in range(state.epoch, config.epochs):
        stats = train_one_epoch(trainer, state, lambda: any_rank(stop.requested, d), profiler)
        if stats.stopped:
            stop_now(state, config, run)
        finished_epoch = state.step >= trainer.steps_per_epoch
        if finished_epoch:
            state.epoch, state.step = epoch + 1, 0
        metrics = validate(state.eval_model, trainer)
        row = record_epoch(run, state, epoch, stats, metrics, started)
        keep_if_selected(state, metrics, setup, run)
        if clock.due(run_ends=not finished_epoch or epoch + 1 == config.epochs or out_of_steps(state, config)):
            checkpoint_now(state, config, run)
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics)
        if out_of_steps(state, config):
            break
        if epoch + 1 < config.epochs and any_rank(stop.requested, d):  # during validation: stop before the next epoch
            stop_now(state, config, run)
    if profiler is not None:
        profiler.stop()
    return finish(setup, run, state, metrics, started, d)


# ---------------------------------------------------------------- the end of an epoch, the end of the run


def record_epoch(run: Run, state: TrainState, epoch: int, stats: EpochStats, metrics: dict, started: float) -> dict:
    """The health checks see the epoch; RUN/metrics.jsonl gets its row."""
    state.monitor.on_epoch(stats.accuracy, metrics["val_accuracy"])
    row = {"epoch": epoch + 1, "step": state.global_step, "train_loss": stats.loss, "train_accuracy": stats.accuracy,
           "lr": state.scheduler.get_last_lr()[0], **metrics, "elapsed_s": round(time.time() - started, 1)}
    run.append_metrics(row)
    return row


def keep_if_selected(state: TrainState, metrics: dict, setup: Setup, run: Run) -> None:
    """--select best: save the model when it beats the saved one (`selection_score`); --select last: save it every epoch."""
    score = selection_score(metrics)
    if state.best is None or score > tuple(state.best) or setup.config.select == "last":
        state.best = list(score)
        save_model(state.eval_model, setup.transform, setup.config, metrics, run)


@dataclass
class CheckpointClock:
    """End-of-epoch checkpoints come at most every CHECKPOINT_INTERVAL_S, and always when the run ends."""

    saved_at: float = field(default_factory=time.time)

    def due(self, run_ends: bool) -> bool:
        if run_ends or time.time() - self.saved_at >= CHECKPOINT_INTERVAL_S:
            self.saved_at = time.time()
            return True
        return False


def checkpoint_now(state: TrainState, config: TrainConfig, run: Run) -> None:
    if run.main:
        save_checkpoint(state, config, run.dir)
        run.saved()


def stop_now(state: TrainState, config: TrainConfig, run: Run) -> None:
    """A stop signal: checkpoint where the run is, then end it with the command that continues it."""
    checkpoint_now(state, config, run)
    raise Interrupted(f"stopped by signal at epoch {state.epoch + 1}, step {state.step}; a checkpoint is in {run.dir}. "
                      f"Continue with: bintally train --resume {run.dir}")


def finish(setup: Setup, run: Run, state: TrainState, final: dict, started: float, d: Dist) -> TrainResult:
    """RUN/health.json, RUN/result.json and RUN/model_card.md; the result."""
    health = state.monitor.summary(d.device.type)
    result = {"run": str(run.dir), "best_val": state.best, "final": final, "health": health,
              "wall_time_s": round(time.time() - started, 1), "world_size": d.world_size}
    run.write_json("health.json", health)
    run.write_json("result.json", result)
    if run.main:
        write_model_card(run, setup.config, setup.df, result)
    return TrainResult(model=setup.model, labels=setup.config.model.labels, epochs_done=setup.config.epochs, **result)


def make_profiler(config: TrainConfig, run: Run):
    if not config.profile:
        return None
    trace = run.dir / "profile"
    trace.mkdir(exist_ok=True)
    profiler = torch.profiler.profile(
        schedule=torch.profiler.schedule(wait=1, warmup=1, active=3, repeat=1),
        on_trace_ready=torch.profiler.tensorboard_trace_handler(str(trace)),
        record_shapes=True,
    )
    profiler.start()
    return profiler


def save_model(model: CountingModel, transform: TransformConfig, config: TrainConfig, metrics: dict, run: Run) -> None:
    """RUN/model: the model artifact (safetensors weights and model.json) that evaluate, predict, export and serve load."""
    if run.main:
        save_artifact(run.dir / RUN_SUBDIR, model, transform, config.tta, config.to_dict(), metrics)
        run.saved()


def write_model_card(run: Run, config: TrainConfig, df: pd.DataFrame, result: dict) -> None:
    best = read_artifact(run.dir / RUN_SUBDIR).metrics
    split_counts = df["split"].value_counts().to_dict()
    model, labels = config.model, config.model.labels
    lines = [
        "# Model card", "",
        f"- backbone: `{model.backbone}` ({weights_description(model.backbone, model.pretrained, model.weights)}), "
        f"head: `{model.head}` on `{model.features}` features, mode: `{config.mode}`",
        f"- classes: {', '.join(labels.names)}"
        + (f" (last = more than {labels.max_count} items)" if labels.overflow else f" (trained on {labels.description} only)"),
        f"- data: `{df.attrs.get('info', {}).get('source', config.data or 'bundled sample')}`; split sizes: {split_counts}",
        f"- image size {config.image_size}, epochs {config.epochs}, batch {config.batch_size} x {result['world_size']} processes, "
        f"optimizer {config.optimizer} lr {config.lr}, schedule {config.schedule}",
        f"- wall time: {result['wall_time_s']} s; git commit: {git_commit()}", "",
        f"## Validation metrics of the saved model ({'the best epoch' if config.select == 'best' else 'the last epoch'})", "",
        "| metric | value |", "|---|---|",
        *[f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in best.items()], "",
        "## Health checks", "",
        *([f"- **{k}**: {v}" for k, v in result["health"]["findings"].items()] or ["- no problems found"]),
    ]
    (run.dir / "model_card.md").write_text("\n".join(lines) + "\n")
