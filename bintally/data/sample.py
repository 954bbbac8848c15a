"""The bundled ABID sample: the default data of every command."""

from __future__ import annotations

from pathlib import Path

from bintally import __version__
from bintally.paths import SAMPLE_DIR, cache_dir


def sample_manifest(refresh: bool = False) -> Path:
    """Index and split the bundled sample once; later calls reuse the cached manifest (rebuilt if it is unreadable)."""
    from bintally.data.index import build_manifest
    from bintally.data.manifest import read_manifest, write_manifest
    from bintally.data.split import split_manifest
    from bintally.errors import DataError

    path = cache_dir() / f"sample-{__version__}.parquet"
    if path.exists() and not refresh:
        try:
            read_manifest(path)
            return path
        except DataError:  # damaged, or written by another version of the checks: the sample is cheap to rebuild
            pass
    df = split_manifest(build_manifest(SAMPLE_DIR))
    write_manifest(df, path, info=df.attrs["info"])
    return path
