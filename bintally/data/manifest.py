"""The manifest: one Parquet row per photo, the table every later stage reads."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bintally.errors import DataError
from bintally.io import atomic_path

MANIFEST_VERSION = 1
OK = "ok"

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


def usable(df: pd.DataFrame) -> pd.Series:
    return df["status"] == OK


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
    path = Path(path)
    if not path.exists():
        raise DataError(path, "no such manifest")
    if path.is_dir():
        raise DataError(path, "is a folder, expected a Parquet manifest (make one with `bintally data index`)")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(path, f"not a readable Parquet manifest ({e})") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(path, f"manifest lacks columns {missing}")
    df = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.string(): pd.StringDtype()}.get)
    df.attrs["info"] = manifest_info(table)
    return df


def manifest_info(table: pa.Table) -> dict:
    raw = (table.schema.metadata or {}).get(b"bintally")
    return json.loads(raw) if raw else {}
