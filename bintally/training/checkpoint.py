"""Checkpoints hold everything a resumed run needs to continue exactly where it stopped."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from bintally.errors import DataError
from bintally.io import atomic_path


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary name, then rename: a kill mid-write never leaves a broken checkpoint."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


CHECKPOINT_FIELDS = ("model", "optimizer", "scheduler", "ema", "health", "epoch", "step", "global_step", "best", "rng")


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
