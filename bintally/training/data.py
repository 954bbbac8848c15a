"""Getting a split manifest for training from whatever the user points at."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bintally.data.index import read_or_index
from bintally.data.manifest import write_manifest
from bintally.data.split import SPLITS, SplitConfig, class_names, split_manifest
from bintally.errors import ConfigError, DataError


def training_manifest(data: str | None, max_count: int, run_dir: Path | None) -> pd.DataFrame:
    """A manifest with `split` and `label`: read, or indexed and split on the fly (saved into the run)."""
    df = read_or_index(data)
    info = df.attrs.get("info", {})
    if "split" not in df or info.get("split", {}).get("max_count", max_count) != max_count:
        df = split_manifest(df, SplitConfig(max_count=max_count))
        if run_dir is not None:
            write_manifest(df, run_dir / "manifest.parquet", info=df.attrs["info"])
    return df


def check_training_data(df: pd.DataFrame, max_count: int, overflow: str = "class") -> dict[str, pd.DataFrame]:
    """Split the manifest and refuse data that cannot train a model, before any work starts.

    With overflow="exclude", photos of more than max_count items are left out of every split.
    """
    keep = df["label"].notna() if overflow == "class" else df["count"].notna() & (df["count"] <= max_count)
    parts = {s: df[(df["split"] == s) & keep].reset_index(drop=True) for s in SPLITS}
    source = df.attrs.get("info", {}).get("source", "<data>")
    if parts["train"].empty:
        raise DataError(source, "the train split is empty")
    if parts["val"].empty:
        raise DataError(source, "the val split is empty")
    present = set(parts["train"]["label"].astype(int))
    names = class_names(max_count, overflow == "class")
    missing = [names[c] for c in range(len(names)) if c not in present]
    if missing:
        raise ConfigError(
            f"{source}: class(es) {', '.join(missing)} have no training examples; "
            f"add photos of those counts or change --max-count"
        )
    return parts
