"""Is each photo a manifest names still the file that was indexed? (deleted, resized or changed since)."""

from __future__ import annotations

import hashlib
import logging
import os
import stat

import pandas as pd

from bintally.data.manifest import OK, manifest_name, usable
from bintally.errors import DataError
from bintally.io import kind_of, open_regular

log = logging.getLogger("bintally.data")
STALE = "stale"


def file_problem(path: str, size: int | None, sha256: str | None = None) -> str:
    """Why the file no longer matches its manifest row ('' when it does)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "missing since indexing"
    except OSError as e:
        return f"unreadable ({e.strerror or e})"
    except ValueError:
        return "unreadable (the path contains a NUL byte)"
    if not stat.S_ISREG(info.st_mode):
        return f"changed since indexing (now {kind_of(info.st_mode)}, not a regular file)"
    actual = info.st_size
    if size is not None and not pd.isna(size) and actual != int(size):
        return f"changed since indexing (size {actual} bytes, manifest says {int(size)})"
    if sha256:
        try:
            with os.fdopen(open_regular(path, "photo"), "rb") as f:
                digest = hashlib.file_digest(f, "sha256").hexdigest()
        except DataError as e:
            return f"unreadable ({e.problem})"
        except OSError as e:
            return f"unreadable ({e.strerror or e})"
        if digest != sha256:
            return "changed since indexing (sha256 differs)"
    return ""


def stale_entries(df: pd.DataFrame, verify_hashes: bool = False) -> pd.DataFrame:
    """Usable rows whose file is missing or changed: columns id, path, problem."""
    rows = df[usable(df)]
    problems = [file_problem(r.path, r.bytes, r.sha256 if verify_hashes else None) for r in rows.itertuples()]
    found = rows.assign(problem=problems)[["id", "path", "problem"]]
    return found[found["problem"] != ""].reset_index(drop=True)


def drop_stale(df: pd.DataFrame, verify_hashes: bool = False, report: bool = True) -> pd.DataFrame:
    """Mark rows whose file changed or vanished since indexing as unusable, one log line each and a count.

    Training and evaluation call this before they start, so that no photo fails them halfway.
    """
    stale = stale_entries(df, verify_hashes)
    if stale.empty:
        return df
    if report:
        for row in stale.itertuples():
            log.warning("%s: %s (skipped)", row.path, row.problem)
        source = manifest_name(df)
        log.warning("%d photo(s) of %s skipped: missing or changed since indexing (re-index, or see `bintally data check`)",
                    len(stale), source)
    df = df.copy()
    df.loc[df["path"].isin(set(stale["path"])) & (df["status"] == OK), "status"] = STALE + ": " + df["path"].map(
        dict(zip(stale["path"], stale["problem"]))).fillna("")
    return df
