"""The bundled ABID sample: the default data of every command."""

from __future__ import annotations

from pathlib import Path

from bintally import __version__
from bintally.paths import SAMPLE_DIR, cache_dir


def sample_manifest(refresh: bool = False) -> Path:
    """Index and split the bundled sample once; later calls reuse the cached manifest."""
    from bintally.data.index import build_manifest
    from bintally.data.manifest import write_manifest
    from bintally.data.split import split_manifest

    path = cache_dir() / f"sample-{__version__}.parquet"
    if refresh or not path.exists():
        df = split_manifest(build_manifest(SAMPLE_DIR))
        write_manifest(df, path, info=df.attrs["info"])
    return path
