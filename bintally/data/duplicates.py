"""Exact and near-duplicate photos: sha256 groups, perceptual-hash pairs, and the groups they form."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from bintally.data.split_config import ID_BLOCK, NEAR_DUPLICATE_DISTANCE


def phash_bits(phashes: pd.Series) -> np.ndarray:
    return np.array([int(h, 16) for h in phashes], dtype=np.uint64)


def near_duplicate_pairs(phashes: pd.Series, max_distance: int = NEAR_DUPLICATE_DISTANCE, chunk: int = 1024) -> pd.DataFrame:
    """All pairs (i < j, positional) whose pHashes differ in at most `max_distance` bits."""
    bits = phash_bits(phashes)
    found = []
    for start in range(0, len(bits), chunk):
        block = bits[start : start + chunk]
        dist = np.bitwise_count(block[:, None] ^ bits[None, :])
        i, j = np.nonzero(dist <= max_distance)
        i = i + start
        keep = i < j
        found.append(pd.DataFrame({"i": i[keep], "j": j[keep], "distance": dist[i[keep] - start, j[keep]]}))
    if not found:
        return pd.DataFrame({"i": [], "j": [], "distance": []}, dtype=int)
    return pd.concat(found, ignore_index=True)


def exact_duplicate_groups(df: pd.DataFrame) -> list[list[str]]:
    """Ids of photos with byte-identical content, one list per group of two or more."""
    hashed = df[df["sha256"].fillna("") != ""]
    groups = hashed.groupby("sha256")["id"].agg(list)
    return [sorted(g) for g in groups if len(g) > 1]


def id_block_key(photo_id: str, block: int = ID_BLOCK) -> str:
    """Consecutive ABID ids are often the same bin before and after a pick: block them together.

    Ids keep their text form, so "00105" and "105" fall in different blocks.
    """
    if photo_id.isdigit():
        return f"{len(photo_id)}:{int(photo_id) // block}"
    return f"name:{photo_id}"


def duplicate_groups(df: pd.DataFrame, max_distance: int = NEAR_DUPLICATE_DISTANCE, block: int = ID_BLOCK) -> np.ndarray:
    """Group number per row: rows linked by id block, identical bytes or near-identical pHash share one."""
    n = len(df)
    edges = [near_duplicate_pairs(df["phash"], max_distance)[["i", "j"]].to_numpy()]
    for key in (df["id"].map(lambda i: id_block_key(i, block)), df["sha256"]):
        codes = pd.factorize(key)[0]
        first = pd.Series(np.arange(n)).groupby(codes).transform("first").to_numpy()
        edges.append(np.stack([np.arange(n), first], axis=1))
    e = np.concatenate(edges)
    graph = coo_matrix((np.ones(len(e)), (e[:, 0], e[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]
