"""`bintally data split`: label space and train/val/test assignment, leak-free by construction.

Rows are grouped (id blocks, identical bytes, near-identical pHash) and whole groups are assigned
to splits with a stratified group k-fold, so no near-duplicate pair can straddle two splits.
Any number of photos can be split: with fewer groups than folds there are fewer folds, each split
with a share gets at least one fold while folds last, and a class whose few groups all fell outside
train moves one of them into train (a model cannot learn a class it never sees).
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from bintally.data.duplicates import duplicate_groups
from bintally.data.manifest import EXCLUDED, SPLITS, info_labels, manifest_name, usable
from bintally.data.split_config import SplitConfig, read_file_list
from bintally.errors import DataError
from bintally.labels import LabelSpace

FOLDS = 20  # assignment granularity: 5% of the data


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
    df.attrs["info"] = {**df.attrs.get("info", {}), "split": config.to_dict(), "classes": config.labels.names}
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
