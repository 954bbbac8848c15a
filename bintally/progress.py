"""Progress bars: one switch (`--no-progress`, or BINTALLY_NO_PROGRESS=1) hides every bar, nested ones included."""

from __future__ import annotations

import os

from tqdm.std import tqdm  # tqdm.auto iterates a DataLoader once more just to start (twice the workers)

ENV = "BINTALLY_NO_PROGRESS"
PROGRESS_HELP = "Show progress bars (--no-progress hides every bar)."


def set_progress(enabled: bool) -> None:
    """Show or hide every bar of this process and of the worker processes it starts."""
    if enabled:
        os.environ.pop(ENV, None)
    else:
        os.environ[ENV] = "1"


def progress_enabled() -> bool:
    return os.environ.get(ENV, "") in ("", "0")


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs) -> tqdm:
    """A tqdm bar, hidden when `enabled` is false or bars are switched off for the process."""
    return tqdm(iterable, disable=not (enabled and progress_enabled()), **kwargs)
