"""Getting the photos for training from whatever the user points at, and refusing data that cannot train."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bintally.data.manifest import EXCLUDED, manifest_name, write_manifest
from bintally.data.sample import read_or_index
from bintally.data.split import SPLITS, SplitConfig, manifest_labels, split_manifest
from bintally.data.verify import drop_stale
from bintally.errors import ConfigError, DataError
from bintally.labels import LabelSpace, overflow_word


def labelled_manifest(data: str | None, labels: LabelSpace | None) -> pd.DataFrame:
    """A manifest with `split` and `label` in the label space asked for (None: the manifest's own).

    Data without a split is split now; a split manifest keeps its split and is labelled in the label space asked for. Photos that vanished
    or changed since indexing are reported and left out.
    """
    df = drop_stale(read_or_index(data))
    if "split" in df:  # the split is kept whatever the label space, so the test photos stay the same photos
        if labels is None or manifest_labels(df) == labels:
            return df
        return relabelled(df, labels)
    labels = labels or LabelSpace()
    df = split_manifest(df, SplitConfig(min_count=labels.min_count, max_count=labels.max_count, overflow=labels.overflow))
    df.attrs["split_here"] = True
    return df


def config_manifest(config):
    """The manifest a training config reads, labelled in its label space, and the config with that space filled in.

    Label-space settings left unset take the manifest's (unsplit data: 0-5 and an overflow class).
    """
    df = labelled_manifest(config.data, None if config.labels_from_manifest else config.model.labels)
    config = config.with_labels(manifest_labels(df))
    if manifest_labels(df) != config.model.labels:
        df = relabelled(df, config.model.labels)
    return df, config


def relabelled(df: pd.DataFrame, labels: LabelSpace) -> pd.DataFrame:
    """The same split with labels in another label space; photos outside it get no label and are excluded, as `data split` does."""
    label = labels.label_of(df["count"])
    df = df.assign(label=label.to_numpy(), split=df["split"].where(label.notna().to_numpy(), EXCLUDED))
    info = dict(df.attrs.get("info", {}))
    info["split"] = {**info.get("split", {}), "min_count": labels.min_count, "max_count": labels.max_count,
                     "overflow": overflow_word(labels.overflow)}
    info["classes"] = labels.names
    df.attrs["info"] = info
    return df


def training_manifest(data: str | None, max_count: int, run_dir: Path | None) -> pd.DataFrame:
    """The split manifest with the counts 0..max_count and an overflow class; saved into the run when it was split here."""
    df = labelled_manifest(data, LabelSpace(0, max_count, True))
    if run_dir is not None:
        save_split(df, run_dir)
    return df


def save_split(df: pd.DataFrame, run_dir: Path) -> None:
    """A split made on the fly is kept with the run, so that evaluate can score the same test photos."""
    if df.attrs.get("split_here"):
        write_manifest(df, run_dir / "manifest.parquet", info=df.attrs["info"])


def check_training_data(df: pd.DataFrame, labels: LabelSpace) -> dict[str, pd.DataFrame]:
    """Split the manifest into train/val/test and refuse data that cannot train a model, before any work starts."""
    keep = labels.label_of(df["count"]).notna() & df["label"].notna() & (df["status"] == "ok")
    parts = {s: df[(df["split"] == s) & keep].reset_index(drop=True) for s in SPLITS}
    source = manifest_name(df)
    for split in ("train", "val"):
        if parts[split].empty:
            raise DataError(source, f"the {split} split has no usable photos of {labels.description} "
                                    f"({len(df)} photos in all); add photos or re-split with other fractions")
    missing = labels.missing_classes(parts["train"]["label"])
    if missing:
        listed = ", ".join(missing[:10]) + (f" ... ({len(missing)} in all)" if len(missing) > 10 else "")  # --max-count 100000
        raise ConfigError(f"{source}: class(es) {listed} have no training examples; add photos of those counts, "
                          f"or change the label space (--min-count/--max-count/--overflow; now {labels.description})")
    return parts
