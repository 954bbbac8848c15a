"""`bintally data check`: missing or changed files, corrupt files, duplicates, and near-duplicates that leak across splits."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from bintally.data.duplicates import NEAR_DUPLICATE_DISTANCE, exact_duplicate_groups, near_duplicate_pairs
from bintally.data.manifest import SPLITS, usable
from bintally.data.verify import stale_entries


@dataclass
class CheckReport:
    n_photos: int
    unusable: list[dict] = field(default_factory=list)  # {"id", "path", "status"}
    stale: list[dict] = field(default_factory=list)  # {"id", "path", "problem"}: missing or changed since indexing
    exact_duplicates: list[list[str]] = field(default_factory=list)
    near_duplicates: list[dict] = field(default_factory=list)  # {"id_a", "id_b", "distance", "split_a", "split_b"}
    leaks: list[dict] = field(default_factory=list)  # near-duplicate pairs in two different splits

    @property
    def ok(self) -> bool:
        return not self.leaks and not self.stale

    def as_dict(self) -> dict:
        return {
            "n_photos": self.n_photos,
            "n_unusable": len(self.unusable),
            "n_stale": len(self.stale),
            "n_exact_duplicate_groups": len(self.exact_duplicates),
            "n_near_duplicate_pairs": len(self.near_duplicates),
            "n_leaks": len(self.leaks),
            "unusable": self.unusable,
            "stale": self.stale,
            "exact_duplicates": self.exact_duplicates,
            "near_duplicates": self.near_duplicates,
            "leaks": self.leaks,
        }


def check_manifest(df: pd.DataFrame, max_distance: int = NEAR_DUPLICATE_DISTANCE, verify_hashes: bool = False) -> CheckReport:
    """Findings on a manifest; each usable photo's file is re-checked (size, and sha256 with `verify_hashes`)."""
    report = CheckReport(n_photos=len(df))
    bad = df[~usable(df)]
    report.unusable = bad[["id", "path", "status"]].astype(str).to_dict("records")
    report.stale = stale_entries(df, verify_hashes).astype(str).to_dict("records")
    good = df[usable(df)].reset_index(drop=True)
    report.exact_duplicates = exact_duplicate_groups(good)
    split = good["split"] if "split" in good else pd.Series([""] * len(good), dtype="string")
    pairs = near_duplicate_pairs(good["phash"], max_distance)
    for i, j, d in pairs[["i", "j", "distance"]].itertuples(index=False):
        pair = {"id_a": good["id"][i], "id_b": good["id"][j], "distance": int(d),
                "split_a": str(split[i]), "split_b": str(split[j])}
        report.near_duplicates.append(pair)
        if pair["split_a"] != pair["split_b"] and {pair["split_a"], pair["split_b"]} <= set(SPLITS):
            report.leaks.append(pair)
    return report


def format_report(report: CheckReport, limit: int = 20) -> str:
    lines = [
        f"photos: {report.n_photos}",
        f"missing or changed since indexing: {len(report.stale)}",
        *[f"  {r['path']}: {r['problem']}" for r in report.stale[:limit]],
        f"unusable files: {len(report.unusable)}",
        *[f"  {r['path']}: {r['status']}" for r in report.unusable[:limit]],
        f"exact duplicate groups (same sha256): {len(report.exact_duplicates)}",
        *[f"  {', '.join(g)}" for g in report.exact_duplicates[:limit]],
        f"near-duplicate pairs (pHash distance): {len(report.near_duplicates)}",
        f"near-duplicate pairs across splits (leakage): {len(report.leaks)}",
        *[f"  {p['id_a']} ({p['split_a']}) ~ {p['id_b']} ({p['split_b']}), distance {p['distance']}" for p in report.leaks[:limit]],
    ]
    hidden = max(len(report.stale), len(report.unusable), len(report.exact_duplicates), len(report.leaks)) - limit
    if hidden > 0:
        lines.append(f"(lists cut at {limit}; --json writes them all)")
    lines.append("LEAKAGE: near-duplicates straddle splits" if report.leaks else "no leakage across splits")
    if report.stale:
        lines.append("STALE: photos missing or changed since indexing (re-index with `bintally data index`)")
    return "\n".join(lines)
