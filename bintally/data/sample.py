"""The bundled ABID sample: the default data of every command, and the one place that falls back to it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from bintally import __version__
from bintally.data.index import build_manifest, report_unusable
from bintally.data.manifest import read_manifest, write_manifest
from bintally.data.split import split_manifest
from bintally.errors import DataError
from bintally.io import given_path
from bintally.paths import SAMPLE_DIR, cache_dir


def sample_manifest(refresh: bool = False) -> Path:
    """Index and split the bundled sample once; later calls reuse the cached manifest (rebuilt if it is unreadable).
    The cache is per installed copy: a manifest names its photos by absolute path, so another checkout indexes its own."""
    where = hashlib.sha256(str(SAMPLE_DIR.resolve()).encode()).hexdigest()[:8]
    path = cache_dir() / f"sample-{__version__}-{where}.parquet"
    if path.exists() and not refresh:
        try:
            read_manifest(path)
            return path
        except DataError:  # damaged, or written by another version of the checks: the sample is cheap to rebuild
            pass
    df = split_manifest(build_manifest(SAMPLE_DIR))
    write_manifest(df, path, info=df.attrs["info"])
    return path


def data_or_sample(data: str | Path | None) -> str | Path:
    """The data a command was given, or the bundled sample's manifest when none was: every command's default data."""
    return sample_manifest() if data is None else data


def read_or_index(data: str | Path | None, progress: bool = True) -> pd.DataFrame:
    """A manifest (.parquet) as it is, a folder or CSV indexed now, or the bundled sample's manifest for None."""
    data = data_or_sample(data)
    if given_path(data, "data path").suffix.lower() == ".parquet":
        return read_manifest(data)
    df = build_manifest(data, progress=progress)
    report_unusable(df)
    return df
