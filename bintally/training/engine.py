"""`bintally train`: a readable recipe from a split manifest to a counting model.

One loop serves every mode: in `frozen` mode it trains the head on cached backbone features,
in `partial` and `full` mode it trains on the photos themselves. Runs under torchrun for
DistributedDataParallel. SIGTERM/SIGINT write a checkpoint before exit; `--resume` continues.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import subprocess
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from bintally.data.dataset import BinPhotos, photo_loader
from bintally.data.transforms import TransformConfig
from bintally.errors import ConfigError, DataError
from bintally.evaluation.metrics import PUBLISHED_MAX, count_metrics
from bintally.io import atomic_path, check_output_folder
from bintally.labels import LabelSpace
from bintally.models.artifact import RUN_SUBDIR, read_artifact
from bintally.models.artifact import save_model as save_artifact
from bintally.models.backbones import weights_description
from bintally.models.model import CachedViewProbs, CountingModel, ProbabilityModel, weights_problem
from bintally.progress import progress_bar
from bintally.training.checkpoint import load_checkpoint, restore_rng, rng_state, save_atomic
from bintally.training.config import EXTENDABLE, RESUMABLE_CHANGES, TrainConfig, config_differences
from bintally.training.crossval import cross_validate
from bintally.training.data import check_training_data, config_manifest, save_split
from bintally.training.distributed import Dist, any_rank, cleanup, pick_device, setup_distributed
from bintally.training.features import cached_features
from bintally.training.health import HealthMonitor
from bintally.training.rundir import RunDir

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
    cross_validation: dict | None = None  # --folds K: per-fold metrics, mean and standard deviation


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


# ---------------------------------------------------------------- model, optimiser, schedule


def backbone_stages(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's stages from input to output, for partial unfreezing."""
    if hasattr(backbone, "blocks") and hasattr(backbone, "conv_head"):  # timm EfficientNet family
        stages = [nn.ModuleList([backbone.conv_stem, backbone.bn1]), *backbone.blocks,
                  nn.ModuleList([backbone.conv_head, backbone.bn2])]
        return [s for s in stages if any(True for _ in s.parameters())]  # cut at stride 16, the head conv is gone
    if hasattr(backbone, "layer4"):  # torchvision ResNet
        return [nn.ModuleList([backbone.conv1, backbone.bn1]), backbone.layer1, backbone.layer2,
                backbone.layer3, backbone.layer4]
    return list(backbone.children())


def freeze_for_mode(model: CountingModel, config: TrainConfig) -> list[nn.Module]:
    """Set requires_grad for the mode; return the backbone modules that stay frozen (kept in eval mode)."""
    stages = backbone_stages(model.backbone)
    if config.mode == "full":
        return []
    trainable = stages[len(stages) - config.unfreeze:] if config.mode == "partial" and config.unfreeze > 0 else []
    frozen = [s for s in stages if all(s is not t for t in trainable)]
    for stage in frozen:
        stage.requires_grad_(False)
    return frozen


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    head = [p for n, p in model.named_parameters() if p.requires_grad and not n.startswith("backbone.")]
    body = [p for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")]
    groups = [{"params": head, "lr": config.lr}]
    if body:
        groups.append({"params": body, "lr": config.lr * config.backbone_lr_scale})
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay, nesterov=True)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, weight_decay=config.weight_decay)


def lr_factor(step: int, steps_per_epoch: int, config: TrainConfig) -> float:
    """Warm-up, then cosine / cosine with warm restarts (SGDR, period doubling) / step decay."""
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return 0.01 + 0.99 * step / warmup
    t = step - warmup
    total = max(config.epochs * steps_per_epoch - warmup, 1)
    if config.schedule == "step":
        return config.step_gamma ** (step // (config.step_epochs * steps_per_epoch))
    if config.schedule == "sgdr":
        period = config.restart_epochs * steps_per_epoch
        while t >= period:
            t, period = t - period, period * 2
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * t / period))
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(t / total, 1.0)))


def class_weights(labels: np.ndarray, n_classes: int) -> torch.Tensor:
    freq = np.bincount(labels, minlength=n_classes).astype(float)
    w = np.where(freq > 0, 1.0 / np.maximum(freq, 1), 0.0)
    return torch.tensor(w * n_classes / w.sum(), dtype=torch.float32)


def epoch_indices(labels: np.ndarray, config: TrainConfig, epoch: int, d: Dist) -> list[int]:
    """This rank's sample order for an epoch: seeded by (seed, epoch), sharded like DistributedSampler."""
    g = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    n = len(labels)
    if config.balance == "sampler":
        weights = class_weights(labels, int(labels.max()) + 1)[labels]
        order = torch.multinomial(weights, n, replacement=True, generator=g)
    else:
        order = torch.randperm(n, generator=g)
    per_rank = n // d.world_size
    return order[: per_rank * d.world_size][d.rank :: d.world_size].tolist()


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def predict_probs(probability_model: nn.Module, loader: DataLoader, device, amp: bool, progress: bool = False,
                  desc="eval") -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of each photo (or cached views) the loader could read, and those photos' indices."""
    probs, indices = [], []
    for x, _, index in progress_bar(loader, desc=desc, leave=False, enabled=progress):
        if not len(index):
            continue
        with autocast(device, amp):
            p = probability_model(x.to(device, non_blocking=True))
        probs.append(p.float().cpu())
        indices.append(index)
    if not probs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=int)
    return torch.cat(probs).numpy(), torch.cat(indices).numpy()


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    dir: Path
    main: bool
    folder: RunDir | None = None  # the locked run directory (main process only)

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


def saved_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.json"
    try:
        values = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DataError(path, "missing: this run cannot be resumed without its config") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"malformed JSON ({e}); this run cannot be resumed") from None
    if not isinstance(values, dict):
        raise DataError(path, "expected a JSON object of settings")
    return TrainConfig.from_dict(values, source=path)


def resumed_config(run_dir: Path, explicit: dict) -> TrainConfig:
    """The saved config with what a resume may change (workers, device, more epochs ...); anything else is refused."""
    saved = saved_config(run_dir)
    differences = config_differences(saved, explicit)
    if differences:
        listed = "; ".join(f"{k}: run has {a!r}, you asked for {b!r}" for k, (a, b) in differences.items())
        raise ConfigError(f"{run_dir}: cannot resume a run with a different config ({listed})")
    if explicit.get("epochs") is not None and explicit["epochs"] < saved.epochs:
        raise ConfigError(f"{run_dir}: the run has {saved.epochs} epochs; a resume may add epochs, not remove them")
    overrides = {k: v for k, v in explicit.items() if v is not None and k in RESUMABLE_CHANGES | EXTENDABLE}
    overrides["max_steps"] = explicit.get("max_steps")  # a smoke-run limit does not carry over
    return TrainConfig.from_dict(saved.to_dict() | overrides | {"out": str(run_dir)})


def finished_result(run_dir: Path, checkpoint: dict, config: TrainConfig) -> TrainResult | None:
    """A result for `--resume` of a run with nothing left to do (its files are left exactly as they are)."""
    if checkpoint["epoch"] < config.epochs or checkpoint["step"] != 0:
        return None
    try:
        saved = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        saved = {}
    return TrainResult(run=str(run_dir), best_val=checkpoint.get("best"), final=saved.get("final", {}), health=saved.get("health", {}),
                       wall_time_s=0.0, world_size=1, model=None, labels=config.labels, already_finished=True,
                       epochs_done=checkpoint["epoch"])


def shared_path(path: Path | None, d: Dist) -> Path:
    """Rank 0's run directory, on every rank."""
    if not d.enabled:
        return path
    box = [str(path) if d.main else None]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])


EpochCallback = Callable[[int, dict], None]


def train(config: TrainConfig, resume: str | None = None, explicit: dict | None = None,
          on_epoch: EpochCallback | None = None, overwrite: bool = False) -> TrainResult:
    """Train (or resume) a counting model; return the final validation metrics and the run directory.

    A new run refuses a directory that holds another run unless `overwrite`. Everything that can be
    refused (settings, data, output location) is checked before the run directory is made.
    `on_epoch(epoch, val_metrics)` is called after each epoch's validation (hyperparameter search
    uses it to report and prune); an exception it raises ends the run.
    """
    if cross_validating(config, resume):
        return cross_validation_result(cross_validate(config, resume, explicit, overwrite), config)
    d = setup_distributed(config.device)
    folder, ended_cleanly = None, False
    try:
        if resume is not None:
            folder = RunDir.resume(resume) if d.main else None
            config = resumed_config(Path(resume), explicit or {})
            checkpoint = load_checkpoint(Path(resume) / "checkpoints" / "last.pt")
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
            check_checkpoint_fits(checkpoint, Path(resume) / "checkpoints" / "last.pt", setup.model)
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


def cross_validating(config: TrainConfig, resume: str | None) -> bool:
    if resume is None:
        return config.folds >= 2
    try:
        return json.loads((Path(resume) / "config.json").read_bytes()).get("folds", 0) >= 2
    except (OSError, ValueError, AttributeError):
        return False  # resume() names what is wrong with the run


def cross_validation_result(cv, config: TrainConfig) -> TrainResult:
    means = {k: v["mean"] for k, v in cv.summary.items()}
    return TrainResult(run=cv.run, best_val=None, final=means, health={"findings": []}, world_size=1, model=None,
                       wall_time_s=round(sum(f["wall_time_s"] for f in cv.folds), 1), labels=config.labels,
                       epochs_done=config.epochs, cross_validation=cv.to_json())


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
    model = CountingModel(config.model_config())  # validates backbone, head and weights
    if config.init is not None:
        start_from(model, config.init)
    parts = check_training_data(df, config.labels)
    per_process = len(parts["train"]) // d.world_size
    if per_process < config.batch_size:
        raise ConfigError(f"batch size {config.batch_size} is larger than the train split per process ({per_process} photos); "
                          f"use --batch-size {max(per_process, 1)} or less, or more photos")
    transform = TransformConfig(config.image_size, model.normalization.mean, model.normalization.std)
    return Setup(config, model, df, parts, transform)


def fit(setup: Setup, run: Run, checkpoint: dict | None, d: Dist, stop: StopFlag,
        on_epoch: EpochCallback | None = None) -> TrainResult:
    started = time.time()
    config, model, parts, transform = setup.config, setup.model, setup.parts, setup.transform
    amp = d.device.type == "cuda" if config.amp is None else config.amp
    if run.main:
        (run.dir / "checkpoints").mkdir(exist_ok=True)
        config.save(run.dir / "config.json")
        save_split(setup.df, run.dir)
    frozen_modules = freeze_for_mode(model, config)
    model.to(d.device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)

    train_labels = parts["train"]["label"].to_numpy(dtype=int)
    if config.mode == "frozen":
        views = cached_features(model, parts, transform, config, d)
        train_set, val_set = views.train_dataset(config.seed), views.dataset("val")
        trained: nn.Module = model.head
        forward = model.head
    else:
        train_set = BinPhotos(parts["train"], transform, train=True, seed=config.seed)
        val_set = BinPhotos(parts["val"], transform, train=False)
        trained = model
        forward = model
    if d.enabled:
        trained = DistributedDataParallel(trained)
        forward = trained
    if config.compile:
        forward = torch.compile(forward)

    optimizer = build_optimizer(model, config)
    trainable = [p for p in model.parameters() if p.requires_grad]
    steps_per_epoch = len(train_labels) // d.world_size // config.batch_size
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, config))
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema), use_buffers=True)
           if config.ema > 0 else None)
    weights = class_weights(train_labels, config.labels.n_classes).to(d.device) if config.balance == "weights" else None
    monitor = HealthMonitor(n_classes=config.labels.n_classes)
    start_epoch, start_step, global_step, best = 0, 0, 0, None
    if checkpoint is not None:
        restore_checkpoint(checkpoint, run.dir / "checkpoints" / "last.pt", model, optimizer, scheduler, ema, monitor)
        start_epoch, start_step, global_step, best = checkpoint["epoch"], checkpoint["step"], checkpoint["global_step"], checkpoint["best"]
        log.info("resumed %s at epoch %d, step %d", run.dir, start_epoch + 1, start_step)

    def save(epoch: int, step: int) -> None:
        if run.main:
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "ema": ema.state_dict() if ema is not None else None, "health": monitor.state_dict(),
                         "epoch": epoch, "step": step, "global_step": global_step, "best": best,
                         "rng": rng_state(), "config": config.to_dict()}, run.dir / "checkpoints" / "last.pt")
            run.saved()

    def stop_now(epoch: int, step: int) -> None:
        save(epoch, step)
        raise Interrupted(f"stopped by signal at epoch {epoch + 1}, step {step}; a checkpoint is in {run.dir}. "
                          f"Continue with: bintally train --resume {run.dir}")

    if any_rank(stop.requested, d):  # the signal came while the data or features were being prepared
        stop_now(start_epoch, start_step)
    profiler = make_profiler(config, run) if run.main else None
    metrics: dict = {}
    saved_at = time.time()
    workers = 0 if config.mode == "frozen" else config.workers  # cached features need no loader processes
    val_loader = photo_loader(val_set, config.batch_size * 2, workers)
    for epoch in range(start_epoch, config.epochs):
        indices = epoch_indices(train_labels, config, epoch, d)
        skip = start_step * config.batch_size if epoch == start_epoch else 0
        if hasattr(train_set, "epoch"):
            train_set.epoch = epoch
        loader = photo_loader(train_set, config.batch_size, workers, indices[skip:], drop_last=True)
        trained.train()
        for m in frozen_modules:
            m.eval()
        bar = progress_bar(total=steps_per_epoch, initial=skip // config.batch_size, desc=f"epoch {epoch + 1}/{config.epochs}",
                           enabled=run.main and config.progress, unit="step")
        seen, correct, loss_sum, n_batches = 0, 0, 0.0, 0
        step = skip // config.batch_size
        tick = time.perf_counter()
        for x, y, _ in loader:
            got_batch = time.perf_counter()
            step += 1
            global_step += 1
            if len(y):  # empty when every photo of the batch became unreadable (each was reported)
                loss, grad_norm, right = train_step(model, forward, x, y, optimizer, ema, trainable, weights, config, d.device, amp)
                done = time.perf_counter()
                monitor.on_step(loss, grad_norm, got_batch - tick, done - got_batch)
                correct += right
                seen += len(y)
                loss_sum += loss
                n_batches += 1
                bar.set_postfix(loss=f"{loss_sum / n_batches:.3f}", acc=f"{correct / seen:.2f}",
                                img_s=f"{len(y) * d.world_size / (done - tick):.1f}")
            scheduler.step()
            bar.update(1)
            if profiler is not None:
                profiler.step()
            tick = time.perf_counter()
            if any_rank(stop.requested, d):
                bar.close()
                stop_now(epoch, step)
            if config.max_steps is not None and global_step >= config.max_steps:
                break
        bar.close()
        finished_epoch = step >= steps_per_epoch
        eval_model = ema.module if ema is not None else model
        eval_model.eval()
        metrics = validate(eval_model, config, parts["val"], val_loader, d.device, amp)
        train_acc = correct / max(seen, 1)
        monitor.on_epoch(train_acc, metrics["val_accuracy"])
        row = {"epoch": epoch + 1, "step": global_step, "train_loss": loss_sum / max(n_batches, 1), "train_accuracy": train_acc,
               "lr": scheduler.get_last_lr()[0], **metrics, "elapsed_s": round(time.time() - started, 1)}
        run.append_metrics(row)
        score = selection_score(metrics)
        if best is None or score > tuple(best) or config.select == "last":
            best = list(score)
            save_model(eval_model, transform, config, metrics, run)
        stopping = not finished_epoch or epoch + 1 == config.epochs or (config.max_steps is not None and global_step >= config.max_steps)
        if stopping or time.time() - saved_at >= CHECKPOINT_INTERVAL_S:
            save(epoch + 1 if finished_epoch else epoch, 0 if finished_epoch else step)
            saved_at = time.time()
        log.info("epoch %d: %s", epoch + 1, ", ".join(f"{k}={v:.4g}" for k, v in row.items() if isinstance(v, float)))
        if on_epoch is not None:
            on_epoch(epoch + 1, metrics)
        if config.max_steps is not None and global_step >= config.max_steps:
            break
        if epoch + 1 < config.epochs and any_rank(stop.requested, d):  # during validation: stop before the next epoch
            stop_now(epoch + 1, 0)
    if profiler is not None:
        profiler.stop()
    health = monitor.summary(d.device.type)
    result = {"run": str(run.dir), "best_val": best, "final": metrics, "health": health,
              "wall_time_s": round(time.time() - started, 1), "world_size": d.world_size}
    run.write_json("health.json", health)
    run.write_json("result.json", result)
    if run.main:
        write_model_card(run, config, setup.df, result)
    return TrainResult(model=model, labels=config.labels, epochs_done=config.epochs, **result)


def check_checkpoint_fits(checkpoint: dict, path: Path, model: nn.Module) -> None:
    """The checkpoint's weights fit the model its run's config.json describes (checked before anything is written)."""
    weights = checkpoint["model"]
    problem = weights_problem(model.state_dict(), weights) if isinstance(weights, dict) else "it holds no weights"
    if problem:
        raise DataError(path, f"does not fit the model in the run's config.json ({problem}); "
                              "was config.json or the checkpoint replaced?")


def restore_checkpoint(checkpoint: dict, path: Path, model, optimizer, scheduler, ema, monitor) -> None:
    """Load a resumed run's state (its weights were checked by `check_checkpoint_fits`); a mismatch is a DataError naming it."""
    try:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        monitor.load_state_dict(checkpoint["health"])
        restore_rng(checkpoint["rng"])
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as e:
        detail = " ".join(str(e).split())[:200] or e.__class__.__name__
        raise DataError(path, f"does not fit the run's config.json ({detail}); this run cannot be resumed") from None


def train_step(model: CountingModel, forward, x: torch.Tensor, y: torch.Tensor, optimizer, ema, trainable: list,
               weights: torch.Tensor | None, config: TrainConfig, device: torch.device, amp: bool) -> tuple[float, float, int]:
    """One optimiser step on a batch: its loss, the gradient norm (before clipping) and how many photos it counted right."""
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if config.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, amp):
        out = forward(x)
    out = out.float()
    loss = model.head.loss(out, y, config.label_smoothing, weights)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, 10.0))
    optimizer.step()
    if ema is not None:
        ema.update_parameters(model)
    with torch.no_grad():
        predicted = config.labels.decode(model.head.probs(out).cpu().numpy(), model.decode)
        right = int((predicted == y.cpu().numpy()).sum())
    return loss.item(), grad_norm, right


def validate(model: CountingModel, config: TrainConfig, photos: pd.DataFrame, loader: DataLoader, device, amp: bool) -> dict:
    """Validation metrics (prefixed val_) over the photos the loader could read, counted in the run's label space."""
    probability_model = CachedViewProbs(model.head, config.tta) if config.mode == "frozen" else ProbabilityModel(model, config.tta)
    probs, indices = predict_probs(probability_model, loader, device, amp)
    if not len(indices):
        raise DataError(photos.attrs.get("source", "the val split"), "no validation photo could be read")
    labels = config.labels
    predicted = labels.decode(probs, model.decode)
    true = labels.count_of(photos["label"].to_numpy(dtype=int)[indices])
    return {f"val_{k}": v for k, v in count_metrics(true, labels.count_of(predicted), config.max_count).items()}


def start_from(model: CountingModel, path: str) -> None:
    """--init: the weights of a trained model (same backbone, features, head and label space) as the starting point."""
    from bintally.models.artifact import load_weights

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


def selection_score(metrics: dict) -> tuple[float, float]:
    """What `select best` maximises: validation accuracy on counts 0-5 (the published task), then -RMSE; NaN ranks last."""
    accuracy, rmse = metrics[f"val_accuracy_0_{PUBLISHED_MAX}"], metrics[f"val_rmse_0_{PUBLISHED_MAX}"]
    return (-1.0, 0.0) if math.isnan(accuracy) else (accuracy, -rmse)


def prepare_features(config: TrainConfig) -> None:
    """Compute (or find) the frozen-feature cache that a frozen-mode run of this config reads."""
    d = Dist(device=pick_device(config.device))
    setup = prepare(config, d)
    cached_features(setup.model.to(d.device), setup.parts, setup.transform, setup.config, d)


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
    lines = [
        "# Model card", "",
        f"- backbone: `{config.backbone}` ({weights_description(config.backbone, config.pretrained, config.weights)}), "
        f"head: `{config.head}` on `{config.features}` features, mode: `{config.mode}`",
        f"- classes: {', '.join(config.labels.names)}"
        + (f" (last = more than {config.max_count} items)" if config.labels.overflow else f" (trained on {config.labels.description} only)"),
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
