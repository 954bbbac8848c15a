"""What a run carries from step to step, and what a checkpoint saves of it: model, optimiser, schedule, EMA, health and counters."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from bintally.models.model import CountingModel
from bintally.training.config import TrainConfig
from bintally.training.health import HealthMonitor


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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


@dataclass
class TrainState:
    """Everything a run changes as it trains; `state_dict` is what checkpoints/last.pt holds (with the run's config)."""

    model: CountingModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: AveragedModel | None
    monitor: HealthMonitor
    epoch: int = 0  # where the run goes on: step `step` of epoch `epoch` (both from 0)
    step: int = 0
    global_step: int = 0
    best: list[float] | None = None  # the selection score of the saved model

    @classmethod
    def create(cls, model: CountingModel, config: TrainConfig, steps_per_epoch: int) -> "TrainState":
        """A fresh state for a model already frozen for its mode and on its device."""
        optimizer = build_optimizer(model, config)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps_per_epoch, config))
        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True) if config.ema > 0 else None
        return cls(model, optimizer, scheduler, ema, HealthMonitor(n_classes=config.model.n_classes))

    @property
    def eval_model(self) -> CountingModel:
        """The model that is validated and saved: the EMA of the weights when the run keeps one."""
        return self.ema.module if self.ema is not None else self.model

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None, "health": self.monitor.state_dict(),
                "epoch": self.epoch, "step": self.step, "global_step": self.global_step, "best": self.best, "rng": rng_state()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.monitor.load_state_dict(state["health"])
        restore_rng(state["rng"])
        self.epoch, self.step, self.global_step, self.best = state["epoch"], state["step"], state["global_step"], state["best"]
