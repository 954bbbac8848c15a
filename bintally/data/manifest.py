"""The manifest: one Parquet row per photo, the table every later stage reads."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bintally.errors import ConfigError, DataError
from bintally.io import atomic_path, given_path
from bintally.labels import LabelSpace, overflow_flag

MANIFEST_VERSION = 1
OK = "ok"
SPLITS = ("train", "val", "test")
EXCLUDED = "excluded"
PHASH_PATTERN = r"[0-9a-fA-F]{16}"

SCHEMA = pa.schema(
    [
        ("id", pa.string()),  # file-name stem, kept as text: "00010" and "10" differ
        ("path", pa.string()),
        ("meta_path", pa.string()),
        ("count", pa.int64()),
        ("n_asins", pa.int64()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("bytes", pa.int64()),
        ("sha256", pa.string()),
        ("phash", pa.string()),
        ("mean_r", pa.float32()),
        ("mean_g", pa.float32()),
        ("mean_b", pa.float32()),
        ("std_r", pa.float32()),
        ("std_g", pa.float32()),
        ("std_b", pa.float32()),
        ("status", pa.string()),  # "ok", or why the photo is not usable
    ]
)
SPLIT_FIELDS = [("label", pa.int64()), ("split", pa.string())]
REQUIRED_COLUMNS = [f.name for f in SCHEMA]
INTEGER_COLUMNS = [f.name for f in SCHEMA if f.type == pa.int64()] + ["label"]
TEXT_COLUMNS = [f.name for f in SCHEMA if f.type == pa.string()] + ["split"]


def usable(df: pd.DataFrame) -> pd.Series:
    return df["status"] == OK


def manifest_name(df: pd.DataFrame) -> str:
    """What to call a manifest in a message: its file if it was read from one, else the folder it indexes."""
    return str(df.attrs.get("path") or df.attrs.get("info", {}).get("source") or "<manifest>")


def info_labels(info: dict) -> LabelSpace:
    """The label space a manifest was split with (0-5 and an overflow class if it was not split)."""
    split = info.get("split", {})
    return LabelSpace(int(split.get("min_count", 0)), int(split.get("max_count", 5)), overflow_flag(split.get("overflow", "class")))


def write_manifest(df: pd.DataFrame, path: str | Path, info: dict | None = None) -> Path:
    """Write atomically: the old manifest stays whole until the new one is complete."""
    fields = list(SCHEMA) + [pa.field(n, t) for n, t in SPLIT_FIELDS if n in df.columns]
    schema = pa.schema(fields).with_metadata(
        {"bintally": json.dumps({"version": MANIFEST_VERSION, **(info or {})})}
    )
    table = pa.Table.from_pandas(df[[f.name for f in fields]], schema=schema, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return Path(path)


def read_manifest(path: str | Path) -> pd.DataFrame:
    """The manifest's table, checked row by row for what later stages rely on (DataError naming the first bad row)."""
    path = given_path(path, "manifest path")
    if not path.exists():
        raise DataError(path, "no such manifest")
    if path.is_dir():
        raise DataError(path, "is a folder, expected a Parquet manifest (make one with `bintally data index`)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(path, f"not a readable Parquet manifest ({' '.join(str(e).split())})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(path, f"manifest lacks columns {missing}")
    # ignore_metadata: the column types are the table's own, not those pandas recorded before another tool edited it
    df = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.string(): pd.StringDtype()}.get, ignore_metadata=True)
    df.attrs["info"] = manifest_info(table, path)
    try:
        labels = info_labels(df.attrs["info"])
    except (ConfigError, TypeError, ValueError, AttributeError) as e:
        raise DataError(path, f"the split settings in its metadata are not a label space ({e})") from None
    check_rows(df, labels, path)
    df.attrs["path"] = str(path)
    return normalise(df)


def manifest_info(table: pa.Table, path: Path) -> dict:
    raw = (table.schema.metadata or {}).get(b"bintally")
    try:
        info = json.loads(raw) if raw else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise DataError(path, "its bintally metadata is not JSON (re-index it with `bintally data index`)") from None
    if not isinstance(info, dict):
        raise DataError(path, "its bintally metadata is not a JSON object (re-index it with `bintally data index`)")
    return info


def whole_numbers(values: pd.Series) -> pd.Series:
    """The values as Int64; <NA> where a value is missing or not a whole number."""
    numbers = pd.to_numeric(values, errors="coerce").astype("Float64")
    whole = ((numbers % 1 == 0) & (numbers.abs() < 2**53)).fillna(False).astype(bool)
    return numbers.where(whole).astype("Int64")


def shown(value) -> str:
    """A cell as the user would write it: 3, 'abc', or <missing>."""
    if pd.api.types.is_scalar(value) and pd.isna(value):
        return "<missing>"
    return repr(value.item() if hasattr(value, "item") else value)


def normalise(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in the types the manifest is written with (a table edited by other tools may have drifted)."""
    for col in [c for c in INTEGER_COLUMNS if c in df]:
        if df[col].dtype != "Int64":
            df[col] = whole_numbers(df[col])
    for col in [c for c in TEXT_COLUMNS if c in df]:
        if df[col].dtype != "string":
            df[col] = df[col].astype("string")
    return df


def row_checks(df: pd.DataFrame, labels: LabelSpace) -> list[tuple[pd.Series, Callable[[int], str]]]:
    """(rows that fail, what is wrong with row i) for each thing later stages rely on."""
    text = {c: df[c].astype("string") for c in ("status", "path", "phash")}
    ok = text["status"] == OK
    count = whole_numbers(df["count"])
    checks = [
        (text["status"].fillna("").str.strip() == "", lambda i: "no status"),
        (ok & (df["id"].astype("string").fillna("") == ""), lambda i: "a usable photo with no id"),
        (ok & (text["path"].fillna("") == ""), lambda i: "a usable photo with no path"),
        (ok & ~text["phash"].fillna("").str.fullmatch(PHASH_PATTERN).astype(bool),
         lambda i: f"phash {shown(df['phash'].iloc[i])} is not 16 hex digits"),
        (df["count"].notna() & ~(count >= 0).fillna(False).astype(bool),
         lambda i: f"count {shown(df['count'].iloc[i])} is not a whole number >= 0"),
    ]
    if "split" in df:
        allowed = ", ".join([*SPLITS, EXCLUDED])
        checks.append((~df["split"].isin([*SPLITS, EXCLUDED]).astype(bool),
                       lambda i: f"split {shown(df['split'].iloc[i])} is not one of {allowed}"))
    if "label" in df:
        expected, label = labels.label_of(count), whole_numbers(df["label"])
        checked = df["label"].notna() | (df["split"].isin(SPLITS) if "split" in df else False)
        checks.append((checked & ~(label == expected).fillna(False).astype(bool),
                       lambda i: f"label {shown(df['label'].iloc[i])} does not match count {shown(df['count'].iloc[i])} "
                                 f"in {labels.description} (expected {shown(expected.iloc[i])})"))
    return checks


def check_rows(df: pd.DataFrame, labels: LabelSpace, path: Path) -> None:
    checks = [(mask.fillna(False).astype(bool).to_numpy(), describe)
              for mask, describe in row_checks(df.reset_index(drop=True), labels)]
    bad = np.logical_or.reduce([mask for mask, _ in checks])
    if not bad.any():
        return
    first = int(bad.nonzero()[0][0])
    problem = next(describe(first) for mask, describe in checks if mask[first])
    raise DataError(path, f"{int(bad.sum())} malformed row(s) of {len(df)}; the first, id {shown(df['id'].iloc[first])}: "
                          f"{problem} (repair the manifest, or re-index with `bintally data index`)")
