"""Where bintally finds its bundled sample and keeps its cache."""

from __future__ import annotations

import os
from pathlib import Path

SAMPLE_DIR = Path(__file__).parent / "sample"


def cache_dir() -> Path:
    root = os.environ.get("BINTALLY_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"), "bintally")
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path
