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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset
from bintally.progress import progress_bar

from bintally.data.dataset import BinPhotos
from bintally.data.split import class_names
from bintally.data.transforms import TransformConfig
from bintally.errors import ConfigError
from bintally.evaluation.metrics import count_metrics
from bintally.models.backbones import weights_description
from bintally.models.model import CountingModel, decode_counts
from bintally.training.checkpoint import load_checkpoint, restore_rng, rng_state, save_atomic
from bintally.training.config import RESUMABLE_CHANGES, TrainConfig, config_differences
from bintally.training.data import check_training_data, training_manifest
from bintally.training.distributed import Dist, any_rank, cleanup, pick_device, setup_distributed
from bintally.training.features import cached_features
from bintally.training.health import HealthMonitor

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
    model: CountingModel


class Interrupted(Exception):
    """Training stopped on a signal after writing a checkpoint."""


@dataclass
class StopFlag:
    """Turns SIGTERM/SIGINT into a flag the loop checks after each step; the old handlers come back afterwards.

    A signal that arrives after the last step check (during the final evaluation, say) is not lost:
    once the run has finished and saved, it is raised again for the old handler.
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
        if self.requested and not isinstance(exc, Interrupted):  # Interrupted: the loop already stopped for it
            signal.raise_signal(self.signum)

    def handle(self, signum, frame) -> None:
        self.signum = signum


# ---------------------------------------------------------------- model, optimiser, schedule


def backbone_stages(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's stages from input to output, for partial unfreezing."""
    if hasattr(backbone, "blocks") and hasattr(backbone, "conv_head"):  # timm EfficientNet family
        return [nn.ModuleList([backbone.conv_stem, backbone.bn1]), *backbone.blocks,
                nn.ModuleList([backbone.conv_head, backbone.bn2])]
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


def flip(x: torch.Tensor) -> torch.Tensor:
    return torch.flip(x, dims=[-1])


@torch.no_grad()
def predict_probs(forward, head, loader: DataLoader, device, tta: bool, amp: bool, progress: bool = False, desc="eval") -> np.ndarray:
    probs = []
    for x, _, _ in progress_bar(loader, desc=desc, leave=False, enabled=progress):
        x = x.to(device, non_blocking=True)
        with autocast(device, amp):
            p = head.probs(forward(x).float())
            if x.dim() == 3:  # cached feature views [B, V, D]: average their predictions
                p = p.mean(1) if tta else p[:, 0]
            elif tta:
                p = (p + head.probs(forward(flip(x)).float())) / 2
        probs.append(p.float().cpu())
    return torch.cat(probs).numpy()


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


# ---------------------------------------------------------------- the run


@dataclass
class Run:
    dir: Path
    main: bool

    def write_json(self, name: str, obj) -> None:
        if self.main:
            (self.dir / name).write_text(json.dumps(obj, indent=2, default=str))

    def append_metrics(self, row: dict) -> None:
        if self.main:
            with open(self.dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def open_run(config: TrainConfig, resume: str | None, explicit: dict) -> tuple[TrainConfig, Path, dict | None]:
    """A new run directory, or the saved config and checkpoint of the run being resumed."""
    if resume is None:
        return config, Path(config.out), None
    run_dir = Path(resume)
    last = run_dir / "checkpoints" / "last.pt"
    if not last.exists():
        raise ConfigError(f"{run_dir}: nothing to resume (no checkpoints/last.pt)")
    saved = TrainConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    differences = config_differences(saved, explicit)
    if differences:
        listed = "; ".join(f"{k}: run has {a!r}, you asked for {b!r}" for k, (a, b) in differences.items())
        raise ConfigError(f"{run_dir}: cannot resume a run with a different config ({listed})")
    overrides = {k: v for k, v in explicit.items() if v is not None and k in RESUMABLE_CHANGES}
    overrides["max_steps"] = explicit.get("max_steps")  # a smoke-run limit does not carry over
    resumed = TrainConfig.from_dict(saved.to_dict() | overrides | {"out": str(run_dir)})
    return resumed, run_dir, load_checkpoint(last)


def loader_for(dataset: Dataset, indices: list[int], batch_size: int, workers: int, drop_last: bool) -> DataLoader:
    # its own generator: creating the iterator must not draw from the global RNG (dropout's), or resume would differ
    return DataLoader(dataset, batch_size=batch_size, sampler=indices, num_workers=workers, drop_last=drop_last,
                      generator=torch.Generator().manual_seed(0), persistent_workers=False)


EpochCallback = Callable[[int, dict], None]


def train(config: TrainConfig, resume: str | None = None, explicit: dict | None = None,
          on_epoch: EpochCallback | None = None) -> TrainResult:
    """Train (or resume) a counting model; return the final validation metrics and the run directory.

    `on_epoch(epoch, val_metrics)` is called after each epoch's validation (hyperparameter search
    uses it to report and prune); an exception it raises ends the run.
    """
    config, run_dir, checkpoint = open_run(config, resume, explicit or {})
    d = setup_distributed(config.device)
    run = Run(run_dir, d.main)
    try:
        with StopFlag() as stop:
            return fit(config, run, checkpoint, d, stop, on_epoch)
    finally:
        cleanup(d)


def fit(config: TrainConfig, run: Run, checkpoint: dict | None, d: Dist, stop: StopFlag,
        on_epoch: EpochCallback | None = None) -> TrainResult:
    started = time.time()
    torch.manual_seed(config.seed)
    amp = d.device.type == "cuda" if config.amp is None else config.amp
    model = CountingModel(config.model_config())  # validates backbone, head and weights first
    if run.main:
        run.dir.mkdir(parents=True, exist_ok=True)
        (run.dir / "checkpoints").mkdir(exist_ok=True)
        config.save(run.dir / "config.json")
    df = training_manifest(config.data, config.max_count, run.dir if run.main else None)
    parts = check_training_data(df, config.max_count, config.overflow)
    transform = TransformConfig(config.image_size, model.normalization.mean, model.normalization.std)
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
    if steps_per_epoch == 0:
        raise ConfigError(f"batch size {config.batch_size} is larger than the train split per process "
                          f"({len(train_labels) // d.world_size} photos)")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, config))
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(config.ema), use_buffers=True)
           if config.ema > 0 else None)
    weights = class_weights(train_labels, config.model_config().n_classes).to(d.device) if config.balance == "weights" else None
    monitor = HealthMonitor(n_classes=config.model_config().n_classes)
    start_epoch, start_step, global_step, best = 0, 0, 0, None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        monitor.load_state_dict(checkpoint["health"])
        start_epoch, start_step, global_step, best = checkpoint["epoch"], checkpoint["step"], checkpoint["global_step"], checkpoint["best"]
        restore_rng(checkpoint["rng"])
        log.info("resumed %s at epoch %d, step %d", run.dir, start_epoch + 1, start_step)

    def save(epoch: int, step: int) -> None:
        if run.main:
            save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "ema": ema.state_dict() if ema is not None else None, "health": monitor.state_dict(),
                         "epoch": epoch, "step": step, "global_step": global_step, "best": best,
                         "rng": rng_state(), "config": config.to_dict()}, run.dir / "checkpoints" / "last.pt")

    profiler = make_profiler(config, run) if run.main else None
    metrics: dict = {}
    saved_at = time.time()
    workers = 0 if config.mode == "frozen" else config.workers  # cached features need no loader processes
    val_loader = loader_for(val_set, list(range(len(val_set))), config.batch_size * 2, workers, False)
    for epoch in range(start_epoch, config.epochs):
        indices = epoch_indices(train_labels, config, epoch, d)
        skip = start_step * config.batch_size if epoch == start_epoch else 0
        if hasattr(train_set, "epoch"):
            train_set.epoch = epoch
        loader = loader_for(train_set, indices[skip:], config.batch_size, workers, True)
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
            x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
            if config.channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(d.device, amp):
                out = forward(x)
            out = out.float()
            loss = model.head.loss(out, y, config.label_smoothing, weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, 10.0))
            optimizer.step()
            scheduler.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            global_step += 1
            done = time.perf_counter()
            monitor.on_step(loss.item(), grad_norm, got_batch - tick, done - got_batch)
            with torch.no_grad():
                correct += int((decode_counts(model.head.probs(out), model.decode) == y).sum())
            seen += len(y)
            loss_sum += loss.item()
            n_batches += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / n_batches:.3f}", acc=f"{correct / seen:.2f}", img_s=f"{len(y) * d.world_size / (done - tick):.1f}")
            if profiler is not None:
                profiler.step()
            tick = time.perf_counter()
            if any_rank(stop.requested, d):
                save(epoch, step)
                bar.close()
                raise Interrupted(f"stopped by signal at epoch {epoch + 1}, step {step}; a checkpoint is in {run.dir}. "
                                  f"Continue with: bintally train --resume {run.dir}")
            if config.max_steps is not None and global_step >= config.max_steps:
                break
        bar.close()
        finished_epoch = step >= steps_per_epoch
        eval_model = ema.module if ema is not None else model
        eval_forward = eval_model.head if config.mode == "frozen" else eval_model
        eval_model.eval()
        probs = predict_probs(eval_forward, eval_model.head, val_loader, d.device, config.tta, amp)
        predicted = decode_counts(torch.from_numpy(probs), model.decode).numpy()
        metrics = {f"val_{k}": v for k, v in count_metrics(parts["val"]["label"].to_numpy(dtype=int), predicted, config.max_count).items()}
        train_acc = correct / max(seen, 1)
        monitor.on_epoch(train_acc, metrics["val_accuracy"])
        row = {"epoch": epoch + 1, "step": global_step, "train_loss": loss_sum / max(n_batches, 1), "train_accuracy": train_acc,
               "lr": scheduler.get_last_lr()[0], **metrics, "elapsed_s": round(time.time() - started, 1)}
        run.append_metrics(row)
        score = (metrics[f"val_accuracy_0_{config.max_count}"], -metrics[f"val_rmse_0_{config.max_count}"])
        if best is None or score > tuple(best):
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
    if profiler is not None:
        profiler.stop()
    health = monitor.summary(d.device.type)
    result = {"run": str(run.dir), "best_val": best, "final": metrics, "health": health,
              "wall_time_s": round(time.time() - started, 1), "world_size": d.world_size}
    run.write_json("health.json", health)
    run.write_json("result.json", result)
    if run.main:
        write_model_card(run, config, df, result)
    return TrainResult(model=model, **result)


def prepare_features(config: TrainConfig) -> None:
    """Compute (or find) the frozen-feature cache that a frozen-mode run of this config reads."""
    model = CountingModel(config.model_config())
    parts = check_training_data(training_manifest(config.data, config.max_count, None), config.max_count, config.overflow)
    transform = TransformConfig(config.image_size, model.normalization.mean, model.normalization.std)
    d = Dist(device=pick_device(config.device))
    cached_features(model.to(d.device), parts, transform, config, d)


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
    """best.pt: what inference needs, nothing more."""
    if run.main:
        save_atomic({"model_config": model.export_config(), "transform": asdict(transform), "state_dict": model.state_dict(),
                     "classes": class_names(config.max_count, config.overflow == "class"), "metrics": metrics, "train_config": config.to_dict()},
                    run.dir / "best.pt")


def write_model_card(run: Run, config: TrainConfig, df: pd.DataFrame, result: dict) -> None:
    best = torch.load(run.dir / "best.pt", map_location="cpu", weights_only=False)["metrics"]
    split_counts = df["split"].value_counts().to_dict()
    lines = [
        "# Model card", "",
        f"- backbone: `{config.backbone}` ({weights_description(config.backbone, config.pretrained, config.weights)}), "
        f"head: `{config.head}`, mode: `{config.mode}`",
        f"- classes: {', '.join(class_names(config.max_count, config.overflow == 'class'))}"
        + (f" (last = more than {config.max_count} items)" if config.overflow == "class" else f" (trained on counts 0-{config.max_count} only)"),
        f"- data: `{df.attrs.get('info', {}).get('source', config.data or 'bundled sample')}`; split sizes: {split_counts}",
        f"- image size {config.image_size}, epochs {config.epochs}, batch {config.batch_size} x {result['world_size']} processes, "
        f"optimizer {config.optimizer} lr {config.lr}, schedule {config.schedule}",
        f"- wall time: {result['wall_time_s']} s; git commit: {git_commit()}", "",
        "## Validation metrics of the saved (best) model", "",
        "| metric | value |", "|---|---|",
        *[f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in best.items()], "",
        "## Health checks", "",
        *([f"- **{k}**: {v}" for k, v in result["health"]["findings"].items()] or ["- no problems found"]),
    ]
    (run.dir / "model_card.md").write_text("\n".join(lines) + "\n")
