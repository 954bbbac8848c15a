"""Training health checks (what the seeds got from SageMaker Debugger and Profiler).

Each finding is logged when it is seen and listed again in the end-of-run summary.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("bintally.health")


@dataclass
class HealthThresholds:
    vanishing_grad: float = 1e-7
    exploding_grad: float = 1e3
    poor_init_ratio: float = 3.0  # first loss over chance-level loss
    loader_wait_share: float = 0.3  # share of step time spent waiting for data
    low_utilisation: float = 0.5  # share of wall time spent computing
    outlier_factor: float = 3.0  # step slower than this many times the median
    overfit_epochs: int = 2  # train/val accuracy gap growing this many epochs in a row
    stall_steps: int = 50  # loss window for "not decreasing"


@dataclass
class HealthMonitor:
    n_classes: int
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    losses: list[float] = field(default_factory=list)
    grad_norms: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    wait_times: list[float] = field(default_factory=list)
    gaps: list[float] = field(default_factory=list)
    findings: dict[str, str] = field(default_factory=dict)

    def flag(self, check: str, message: str) -> None:
        if check not in self.findings:
            log.warning("health: %s: %s", check, message)
        self.findings[check] = message

    def on_step(self, loss: float, grad_norm: float, wait: float, step_time: float) -> None:
        t = self.thresholds
        if not self.losses and loss > t.poor_init_ratio * math.log(self.n_classes):
            self.flag("poor weight initialisation",
                      f"first loss {loss:.2f} is over {t.poor_init_ratio}x chance level ({math.log(self.n_classes):.2f})")
        self.losses.append(loss)
        self.grad_norms.append(grad_norm)
        self.wait_times.append(wait)
        self.step_times.append(step_time)
        if not math.isfinite(grad_norm) or grad_norm > t.exploding_grad:
            self.flag("exploding gradients", f"gradient norm {grad_norm:.3g} at step {len(self.losses)}")
        elif grad_norm < t.vanishing_grad:
            self.flag("vanishing gradients", f"gradient norm {grad_norm:.3g} at step {len(self.losses)}")

    def on_epoch(self, train_acc: float, val_acc: float) -> None:
        self.gaps.append(train_acc - val_acc)
        n = self.thresholds.overfit_epochs
        recent = self.gaps[-(n + 1):]
        if len(recent) == n + 1 and all(b > a for a, b in zip(recent, recent[1:])) and recent[-1] > 0.05:
            self.flag("overfitting", f"train-val accuracy gap grew {n} epochs in a row, now {recent[-1]:.1%}")
        self.check_loss_trend()

    def check_loss_trend(self) -> None:
        w = self.thresholds.stall_steps
        if len(self.losses) >= 2 * w:
            first, last = np.mean(self.losses[:w]), np.mean(self.losses[-w:])
            if last >= first * 0.99:
                self.flag("loss not decreasing", f"mean loss {first:.3f} over the first {w} steps, {last:.3f} over the last {w}")

    def timing_findings(self, device_type: str) -> None:
        if len(self.step_times) < 5:
            return
        steps, waits = np.array(self.step_times[1:]), np.array(self.wait_times[1:])  # the first step warms up
        t = self.thresholds
        wait_share = waits.sum() / max(steps.sum() + waits.sum(), 1e-9)
        if wait_share > t.loader_wait_share:
            self.flag("data-loader bottleneck", f"{wait_share:.0%} of training time spent waiting for data")
        compute_share = 1 - wait_share
        if device_type == "cuda" and compute_share < t.low_utilisation:
            self.flag("low accelerator utilisation", f"the GPU computes only {compute_share:.0%} of the time")
        median = np.median(steps)
        outliers = int((steps > t.outlier_factor * median).sum())
        if outliers:
            self.flag("step-time outliers", f"{outliers} steps over {t.outlier_factor}x the median {median * 1000:.0f} ms")

    def summary(self, device_type: str) -> dict:
        self.check_loss_trend()
        self.timing_findings(device_type)
        steps = np.array(self.step_times[1:] or [0.0])
        waits = np.array(self.wait_times[1:] or [0.0])
        return {
            "findings": self.findings,
            "steps": len(self.losses),
            "median_step_s": float(np.median(steps)),
            "data_wait_share": float(waits.sum() / max(steps.sum() + waits.sum(), 1e-9)),
            "max_grad_norm": float(max(self.grad_norms, default=0.0)),
            "min_grad_norm": float(min(self.grad_norms, default=0.0)),
        }

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("losses", "grad_norms", "step_times", "wait_times", "gaps", "findings")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
