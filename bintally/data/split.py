"""`bintally data split`: label space and train/val/test assignment, leak-free by construction.

Rows are grouped (id blocks, identical bytes, near-identical pHash) and whole groups are assigned
to splits with a stratified group k-fold, so no near-duplicate pair can straddle two splits.
Any number of photos can be split: with fewer groups than folds there are fewer folds, each split
with a share gets at least one fold while folds last, and a class whose few groups all fell outside
train moves one of them into train (a model cannot learn a class it never sees).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from bintally.data.duplicates import ID_BLOCK, NEAR_DUPLICATE_DISTANCE, duplicate_groups
from bintally.data.manifest import EXCLUDED, SPLITS, info_labels, manifest_name, usable
from bintally.data.metadata import load_json
from bintally.errors import ConfigError, DataError
from bintally.labels import LabelSpace

FOLDS = 20  # assignment granularity: 5% of the data
MAX_SEED = 2**32 - 1  # scikit-learn's random_state range


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
        self.fractions = checked_fractions(self.fractions)
        check_whole_number("seed", self.seed, 0, MAX_SEED)
        check_whole_number("near_duplicate_distance", self.near_duplicate_distance, 0, 64)
        check_whole_number("id_block", self.id_block, 1, None)
        LabelSpace.of(self.min_count, self.max_count, self.overflow)  # raises ConfigError for a bad label space

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


def checked_fractions(fractions) -> tuple[float, float, float]:
    problem = ConfigError(f"fractions must be three numbers >= 0 for train, val and test that sum to 1, got {fractions!r}")
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise problem from None
    if len(values) != 3 or not all(math.isfinite(f) and f >= 0 for f in values) or abs(sum(values) - 1) > 1e-6:
        raise problem
    return values


def check_whole_number(name: str, value, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (high is not None and value > high):
        bounds = f"from {low} to {high}" if high is not None else f">= {low}"
        raise ConfigError(f"{name} must be a whole number {bounds}, got {value!r}")


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


def assign_folds(labels: np.ndarray, groups: np.ndarray, seed: int, folds_wanted: int = FOLDS) -> tuple[np.ndarray, int]:
    """The fold of each row (whole groups to one fold, stratified by label) and the number of folds: `folds_wanted`,
    or fewer with fewer groups. `data split` assigns 20 folds to splits; `train --folds K` asks for K."""
    n_folds = min(folds_wanted, len(np.unique(groups)))
    folds = np.zeros(len(labels), dtype=int)
    if n_folds < 2:
        return folds, 1
    # scikit-learn stratifies only if some class has a photo for every fold; else the folds just balance groups
    strata = labels if np.bincount(labels).max() >= n_folds else np.zeros_like(labels)
    cv = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        # "The least populated class in y has only N members": such classes are seen to by keep_classes_in_train
        # (in a cross-validation, check_training_data names a class a fold lacks)
        warnings.simplefilter("ignore", UserWarning)
        for fold, (_, test_idx) in enumerate(cv.split(strata, strata, groups)):
            folds[test_idx] = fold
    return folds, n_folds


def fold_splits(n_folds: int, fractions) -> np.ndarray:
    """The split of each fold: in proportion to `fractions`, and at least one fold for every split with a share while folds last."""
    counts = np.diff(np.round(np.cumsum([0.0, *fractions]) * n_folds)).astype(int)
    for k in np.flatnonzero((counts == 0) & (np.asarray(fractions) > 0)):
        donor = counts.argmax()
        if counts[donor] > 1:
            counts[donor] -= 1
            counts[k] += 1
    return np.repeat(np.array(SPLITS), counts)


def keep_classes_in_train(splits: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """For each class with no photo in train, move its smallest group into train, unless that would empty its split."""
    splits = splits.copy()
    for label in np.unique(labels):
        of_class = labels == label
        if (splits[of_class] == "train").any():
            continue
        candidates, sizes = np.unique(groups[of_class], return_counts=True)
        for group in candidates[np.argsort(sizes, kind="stable")]:
            members = groups == group
            if (splits[~members] == splits[members][0]).any():
                splits[members] = "train"
                break
    return splits


def no_photos_problem(df: pd.DataFrame, config: SplitConfig) -> str:
    ok = usable(df)
    labelled = ok & df["label"].notna()
    problem = f"no photos to split: {int(ok.sum())} of {len(df)} photos are usable, {int(labelled.sum())} of them in {config.labels.description}"
    if config.file_list:
        problem += f", none of them named by the file list {config.file_list}"
    return problem


def split_manifest(df: pd.DataFrame, config: SplitConfig = SplitConfig()) -> pd.DataFrame:
    """Return a copy of the manifest with `label` and `split` columns."""
    df = df.copy()
    df["label"] = config.labels.label_of(df["count"])
    keep = usable(df) & df["label"].notna()
    if config.file_list:
        keep &= df["id"].isin(read_file_list(config.file_list))
    df["split"] = EXCLUDED
    chosen = df[keep].reset_index(drop=True)
    if chosen.empty:
        raise DataError(manifest_name(df), no_photos_problem(df, config))
    labels = chosen["label"].to_numpy(dtype=int)
    groups = duplicate_groups(chosen, config.near_duplicate_distance, config.id_block)
    folds, n_folds = assign_folds(labels, groups, config.seed)
    splits = fold_splits(n_folds, config.fractions)[folds]
    if config.fractions[0] > 0:
        splits = keep_classes_in_train(splits, labels, groups)
    df.loc[keep, "split"] = splits
    df.attrs["info"] = {**df.attrs.get("info", {}), "split": asdict(config), "classes": config.labels.names}
    return df


def split_warnings(df: pd.DataFrame) -> list[str]:
    """What a split manifest lacks that training or evaluation will miss: an empty split, a class absent from a split."""
    fractions = df.attrs.get("info", {}).get("split", {}).get("fractions", (1, 1, 1))
    sizes = df["split"].value_counts()
    wanted = [s for s, share in zip(SPLITS, fractions) if share > 0]
    n = int(sizes.drop(EXCLUDED, errors="ignore").sum())
    found = [f"the {s} split is empty ({n} photo{'' if n == 1 else 's'} split in all)" for s in wanted if not sizes.get(s)]
    filled = [s for s in wanted if sizes.get(s)]
    per_class = pd.crosstab(df["label"], df["split"]).reindex(columns=filled, fill_value=0)
    gaps: dict[tuple, list[str]] = {}  # the splits a class is missing from -> those classes
    for label, name in enumerate(manifest_labels(df).names):
        missing = tuple(s for s in filled if label not in per_class.index or per_class.at[label, s] == 0)
        if missing:
            gaps.setdefault(missing, []).append(name)
    for missing, names in gaps.items():
        where = "any split" if list(missing) == filled else " or ".join(missing)
        found.append(f"class{'es' if len(names) > 1 else ''} {', '.join(names)} "
                     f"{'have' if len(names) > 1 else 'has'} no photos in {where}")
    return found


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
    return info_labels(df.attrs.get("info", {}))
