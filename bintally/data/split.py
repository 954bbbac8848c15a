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
from bintally.labels import LabelSpace

SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"
FOLDS = 20  # assignment granularity: 5% of the data


@dataclass
class SplitConfig:
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    max_count: int = 5
    overflow: str = "class"  # "class": counts above max_count become class max_count+1; "exclude"
    min_count: int = 0  # counts below it have no class (the capstones' 1-5 task uses 1)
    near_duplicate_distance: int = NEAR_DUPLICATE_DISTANCE
    id_block: int = ID_BLOCK
    file_list: str | None = None  # Udacity file_list.json: keep only the ids it names

    def __post_init__(self):
        if len(self.fractions) != 3 or any(f < 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
            raise ValueError(f"fractions must be three non-negative numbers summing to 1, got {self.fractions}")
        self.labels  # validates min_count, max_count and overflow

    @property
    def labels(self) -> LabelSpace:
        return LabelSpace.of(self.min_count, self.max_count, self.overflow)

    @classmethod
    def for_options(cls, min_count: int | None = None, max_count: int | None = None, overflow: str | None = None,
                    file_list: str | None = None, **others) -> "SplitConfig":
        """Settings left out (None) take their defaults; with a file list, the label space is the counts it lists."""
        space = {"min_count": 0, "max_count": 5, "overflow": "class"}
        if file_list:
            counts = file_list_counts(file_list)
            space = {"min_count": min(counts), "max_count": max(counts), "overflow": "exclude"}
        given = {"min_count": min_count, "max_count": max_count, "overflow": overflow}
        space |= {k: v for k, v in given.items() if v is not None}
        return cls(file_list=file_list, **space, **others)


def class_names(max_count: int, overflow: bool = True, min_count: int = 0) -> list[str]:
    """Label i is the count min_count + i; the last label is the overflow class, more than max_count items (if there is one)."""
    return LabelSpace(min_count, max_count, overflow).names


def read_file_list_doc(path: str | Path) -> dict[str, list]:
    doc = load_json(path, "file list")
    if (not isinstance(doc, dict) or not doc or not all(isinstance(v, list) for v in doc.values())
            or not all(isinstance(p, str) for v in doc.values() for p in v)):
        raise DataError(path, 'expected a Udacity file list: {"<count>": ["metadata/<id>.json", ...], ...}')
    return doc


def read_file_list(path: str | Path) -> set[str]:
    """Ids named by a Udacity-style file_list.json ({"1": ["metadata/523.json", ...], ...})."""
    return {Path(p).stem for paths in read_file_list_doc(path).values() for p in paths}


def file_list_counts(path: str | Path) -> list[int]:
    """The counts a file list is keyed by (the capstones' list has 1..5)."""
    keys = list(read_file_list_doc(path))
    if not all(k.strip().isdigit() for k in keys):
        raise DataError(path, f"file list keys must be counts such as \"1\", found {keys[:5]}")
    return sorted(int(k) for k in keys)


def assign_labels(counts: pd.Series, max_count: int, overflow: str, min_count: int = 0) -> pd.Series:
    return LabelSpace.of(min_count, max_count, overflow).label_of(counts)


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
    df["label"] = config.labels.label_of(df["count"])
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
    df.attrs["info"] = {**df.attrs.get("info", {}), "split": asdict(config), "classes": config.labels.names}
    return df


def split_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Photos per class (rows) and split (columns)."""
    names = manifest_labels(df).names
    table = pd.crosstab(df["label"], df["split"]).reindex(columns=[*SPLITS, EXCLUDED], fill_value=0)
    table.index = [names[int(i)] for i in table.index]
    table.loc["total"] = table.sum()
    excluded_unlabelled = int((df["label"].isna()).sum())
    if excluded_unlabelled:
        table.loc["unlabelled/unusable", EXCLUDED] = excluded_unlabelled
    return table.fillna(0).astype(int)


def manifest_labels(df: pd.DataFrame) -> LabelSpace:
    """The label space a manifest was split with (0-5 and an overflow class if it was not split)."""
    split = df.attrs.get("info", {}).get("split", {})
    return LabelSpace.of(int(split.get("min_count", 0)), int(split.get("max_count", 5)), split.get("overflow", "class"))
