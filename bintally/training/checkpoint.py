"""Checkpoints hold everything a resumed run needs to continue exactly where it stopped: its `TrainState` and its config."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from bintally.errors import DataError
from bintally.io import atomic_path
from bintally.models.model import weights_problem
from bintally.training.config import TrainConfig
from bintally.training.state import TrainState

CHECKPOINT_FIELDS = ("model", "optimizer", "scheduler", "ema", "health", "epoch", "step", "global_step", "best", "rng")


def checkpoint_path(run_dir: Path) -> Path:
    return run_dir / "checkpoints" / "last.pt"


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary name, then rename: a kill mid-write never leaves a broken checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def save_checkpoint(state: TrainState, config: TrainConfig, run_dir: Path) -> None:
    save_atomic(state.state_dict() | {"config": config.to_dict()}, checkpoint_path(run_dir))


def load_checkpoint(path: Path) -> dict:
    """A run's own checkpoint (it holds RNG states, so not weights_only); DataError naming it if it is damaged."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise DataError(path, "missing: nothing to resume from") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, OSError, UnpicklingError ... for a damaged file
        detail = " ".join(str(e).split())[:200] or e.__class__.__name__
        raise DataError(path, f"truncated or damaged checkpoint ({detail}); this run cannot be resumed") from None
    missing = [k for k in CHECKPOINT_FIELDS if not isinstance(checkpoint, dict) or k not in checkpoint]
    if missing:
        raise DataError(path, f"not a bintally training checkpoint (missing {', '.join(missing)}); this run cannot be resumed")
    return checkpoint


def check_checkpoint_fits(checkpoint: dict, path: Path, model: nn.Module) -> None:
    """The checkpoint's weights fit the model its run's config.json describes (checked before anything is written)."""
    weights = checkpoint["model"]
    problem = weights_problem(model.state_dict(), weights) if isinstance(weights, dict) else "it holds no weights"
    if problem:
        raise DataError(path, f"does not fit the model in the run's config.json ({problem}); "
                              "was config.json or the checkpoint replaced?")


def restore_checkpoint(state: TrainState, checkpoint: dict, path: Path) -> None:
    """Load a resumed run's state (its weights were checked by `check_checkpoint_fits`); a mismatch is a DataError naming it."""
    try:
        state.load_state_dict(checkpoint)
    except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as e:
        detail = " ".join(str(e).split())[:200] or e.__class__.__name__
        raise DataError(path, f"does not fit the run's config.json ({detail}); this run cannot be resumed") from None
