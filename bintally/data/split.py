"""`bintally data split`: label space and train/val/test assignment, leak-free by construction.

Rows are grouped (id blocks, identical bytes, near-identical pHash) and whole groups are assigned
to splits with a stratified group k-fold, so no near-duplicate pair can straddle two splits.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from bintally.data.duplicates import ID_BLOCK, NEAR_DUPLICATE_DISTANCE, duplicate_groups
from bintally.data.manifest import usable
from bintally.data.metadata import load_json
from bintally.errors import DataError

SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"
FOLDS = 20  # assignment granularity: 5% of the data


@dataclass
class SplitConfig:
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    max_count: int = 5
    overflow: str = "class"  # "class": counts above max_count become class max_count+1; "exclude"
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE
    id_block: int = ID_BLOCK
    file_list: str | None = None  # Udacity file_list.json: keep only the ids it names

    def __post_init__(self):
        if len(self.fractions) != 3 or any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
            raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {self.fractions}")
        if self.overflow not in ("class", "exclude"):
            raise ValueError(f"overflow must be 'class' or 'exclude', got {self.overflow!r}")
        if self.max_count < 0:
            raise ValueError("max_count must be >= 0")


def class_names(max_count: int, overflow: bool = True) -> list[str]:
    """Label i is the count i; the last label is the overflow class, more than max_count items (if there is one)."""
    return [str(c) for c in range(max_count + 1)] + ([f"{max_count + 1}+"] if overflow else [])


def read_file_list(path: str | Path) -> set[str]:
    """Ids named by a Udacity-style file_list.json ({"1": ["metadata/523.json", ...], ...})."""
    doc = load_json(path, "file list")
    if not isinstance(doc, dict) or not all(isinstance(v, list) for v in doc.values()):
        raise DataError(path, 'expected {"<count>": ["metadata/<id>.json", ...], ...}')
    return {Path(p).stem for paths in doc.values() for p in paths}


def assign_labels(counts: pd.Series, max_count: int, overflow: str) -> pd.Series:
    labels = counts.astype("Int64").clip(upper=max_count + 1)
    if overflow == "exclude":
        labels = labels.mask(counts > max_count)
    return labels


def assign_folds(labels: np.ndarray, groups: np.ndarray, seed: int) -> np.ndarray:
    folds = np.empty(len(labels), dtype=int)
    n_splits = min(FOLDS, len(np.unique(groups)))
    if n_splits < 2:
        raise DataError("<manifest>", "too few independent groups of photos to split")
    cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for fold, (_, test_idx) in enumerate(cv.split(np.zeros(len(labels)), labels, groups)):
        folds[test_idx] = fold
    return folds * FOLDS // n_splits


def folds_to_splits(folds: np.ndarray, fractions) -> np.ndarray:
    edges = np.round(np.cumsum(fractions) * FOLDS).astype(int)
    return np.array(SPLITS)[np.searchsorted(edges, folds, side="right")]


def split_manifest(df: pd.DataFrame, config: SplitConfig = SplitConfig()) -> pd.DataFrame:
    """Return a copy of the manifest with `label` and `split` columns."""
    df = df.copy()
    df["label"] = assign_labels(df["count"], config.max_count, config.overflow)
    keep = usable(df) & df["label"].notna()
    if config.file_list:
        keep &= df["id"].isin(read_file_list(config.file_list))
    df["split"] = EXCLUDED
    chosen = df[keep]
    if chosen.empty:
        raise DataError(df.attrs.get("info", {}).get("source", "<manifest>"), "no usable labelled photos to split")
    groups = duplicate_groups(chosen.reset_index(drop=True), config.near_duplicate_distance, config.id_block)
    folds = assign_folds(chosen["label"].to_numpy(dtype=int), groups, config.seed)
    df.loc[keep, "split"] = folds_to_splits(folds, config.fractions)
    df.attrs["info"] = {**df.attrs.get("info", {}), "split": asdict(config), "classes": class_names(config.max_count)}
    return df


def split_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Photos per class (rows) and split (columns)."""
    names = class_names(int(df.attrs.get("info", {}).get("split", {}).get("max_count", 5)))
    table = pd.crosstab(df["label"], df["split"]).reindex(columns=[*SPLITS, EXCLUDED], fill_value=0)
    table.index = [names[int(i)] for i in table.index]
    table.loc["total"] = table.sum()
    excluded_unlabelled = int((df["label"].isna()).sum())
    if excluded_unlabelled:
        table.loc["unlabelled/unusable", EXCLUDED] = excluded_unlabelled
    return table.fillna(0).astype(int)
