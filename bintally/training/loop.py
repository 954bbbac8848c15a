"""One epoch of training and one validation pass, on what a run fixes before its first step (`Trainer`)."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from bintally.data.dataset import photo_loader
from bintally.errors import DataError
from bintally.evaluation.metrics import PUBLISHED_MAX, count_metrics
from bintally.models.model import CachedViewProbs, CountingModel, ProbabilityModel
from bintally.progress import progress_bar
from bintally.training.config import TrainConfig
from bintally.training.distributed import Dist
from bintally.training.state import TrainState


@dataclass
class Trainer:
    """What stays fixed while a run trains: its settings, its data, and the modules a batch goes through."""

    config: TrainConfig
    d: Dist
    amp: bool  # bf16 autocast
    train_set: Dataset
    train_labels: np.ndarray
    val_photos: pd.DataFrame
    val_loader: DataLoader
    trained: nn.Module  # set to train mode each epoch: the head alone in frozen mode
    forward: nn.Module  # what a batch goes through: `trained`, wrapped for DDP and compiled as configured
    frozen_modules: list[nn.Module]  # backbone stages kept in eval mode
    trainable: list[nn.Parameter]
    loss_weights: torch.Tensor | None
    steps_per_epoch: int
    progress: bool


@dataclass
class EpochStats:
    """The training loss and accuracy of the steps an epoch ran (in this process)."""

    seen: int = 0
    correct: int = 0
    loss_sum: float = 0.0
    batches: int = 0
    stopped: bool = False  # a stop signal came: the epoch ended after the step it came in

    def add(self, loss: float, right: int, photos: int) -> None:
        self.seen += photos
        self.correct += right
        self.loss_sum += loss
        self.batches += 1

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.batches, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)


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


def loader_workers(config: TrainConfig) -> int:
    return 0 if config.mode == "frozen" else config.workers  # cached features need no loader processes


def autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if enabled else nullcontext()


def out_of_steps(state: TrainState, config: TrainConfig) -> bool:
    """--max-steps reached."""
    return config.max_steps is not None and state.global_step >= config.max_steps


def train_one_epoch(trainer: Trainer, state: TrainState, stop_requested: Callable[[], bool], profiler=None) -> EpochStats:
    """Train epoch `state.epoch` from step `state.step` until it ends, --max-steps is reached or `stop_requested()`."""
    config = trainer.config
    skip = state.step * config.batch_size
    indices = epoch_indices(trainer.train_labels, config, state.epoch, trainer.d)
    if hasattr(trainer.train_set, "epoch"):
        trainer.train_set.epoch = state.epoch
    loader = photo_loader(trainer.train_set, config.batch_size, loader_workers(config), indices[skip:], drop_last=True)
    trainer.trained.train()
    for m in trainer.frozen_modules:
        m.eval()
    bar = progress_bar(total=trainer.steps_per_epoch, initial=state.step, desc=f"epoch {state.epoch + 1}/{config.epochs}",
                       enabled=trainer.progress, unit="step")
    stats = EpochStats()
    tick = time.perf_counter()
    for x, y, _ in loader:
        got_batch = time.perf_counter()
        state.step += 1
        state.global_step += 1
        if len(y):  # empty when every photo of the batch became unreadable (each was reported)
            loss, grad_norm, right = train_step(trainer, state, x, y)
            done = time.perf_counter()
            state.monitor.on_step(loss, grad_norm, got_batch - tick, done - got_batch)
            stats.add(loss, right, len(y))
            bar.set_postfix(loss=f"{stats.loss:.3f}", acc=f"{stats.accuracy:.2f}",
                            img_s=f"{len(y) * trainer.d.world_size / (done - tick):.1f}")
        state.scheduler.step()
        bar.update(1)
        if profiler is not None:
            profiler.step()
        tick = time.perf_counter()
        if stop_requested():
            stats.stopped = True
            break
        if out_of_steps(state, config):
            break
    bar.close()
    return stats


def train_step(trainer: Trainer, state: TrainState, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, int]:
    """One optimiser step on a batch: its loss, the gradient norm (before clipping) and how many photos it counted right."""
    config, model, device = trainer.config, state.model, trainer.d.device
    x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
    if config.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast(device, trainer.amp):
        out = trainer.forward(x)
    out = out.float()
    loss = model.head.loss(out, y, config.label_smoothing, trainer.loss_weights)
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = float(torch.nn.utils.clip_grad_norm_(trainer.trainable, 10.0))
    state.optimizer.step()
    if state.ema is not None:
        state.ema.update_parameters(model)
    with torch.no_grad():
        predicted = config.model.labels.decode(model.head.probs(out).cpu().numpy(), model.decode)
        right = int((predicted == y.cpu().numpy()).sum())
    return loss.item(), grad_norm, right


def validate(model: CountingModel, trainer: Trainer) -> dict:
    """Validation metrics (prefixed val_) over the photos the loader could read, counted in the run's label space."""
    config = trainer.config
    model.eval()
    probability_model = CachedViewProbs(model.head, config.tta) if config.mode == "frozen" else ProbabilityModel(model, config.tta)
    probs, indices = predict_probs(probability_model, trainer.val_loader, trainer.d.device, trainer.amp)
    if not len(indices):
        raise DataError(trainer.val_photos.attrs.get("source", "the val split"), "no validation photo could be read")
    labels = config.model.labels
    predicted = labels.decode(probs, model.decode)
    true = labels.count_of(trainer.val_photos["label"].to_numpy(dtype=int)[indices])
    return {f"val_{k}": v for k, v in count_metrics(true, labels.count_of(predicted), labels.max_count).items()}


@torch.no_grad()
def predict_probs(probability_model: nn.Module, loader: DataLoader, device, amp: bool) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities of each photo (or cached views) the loader could read, and those photos' indices."""
    probs, indices = [], []
    for x, _, index in loader:
        if not len(index):
            continue
        with autocast(device, amp):
            p = probability_model(x.to(device, non_blocking=True))
        probs.append(p.float().cpu())
        indices.append(index)
    if not probs:
        return np.zeros((0, 0), dtype=np.float32), np.zeros(0, dtype=int)
    return torch.cat(probs).numpy(), torch.cat(indices).numpy()


def selection_score(metrics: dict) -> tuple[float, float]:
    """What `select best` maximises: validation accuracy on counts 0-5 (the published task), then -RMSE; NaN ranks last."""
    accuracy, rmse = metrics[f"val_accuracy_0_{PUBLISHED_MAX}"], metrics[f"val_rmse_0_{PUBLISHED_MAX}"]
    return (-1.0, 0.0) if math.isnan(accuracy) else (accuracy, -rmse)
