"""`bintally data index`: turn a folder of bin photos into a manifest.

Three layouts are understood:
- bucket: `bin-images/<id>.jpg` with `metadata/<id>.json` (the public ABID bucket, or a mirror);
- class folders: `<count>/<name>.jpg`;
- a CSV with columns `path,count` (paths relative to the CSV).
"""

from __future__ import annotations

import csv
import logging
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from bintally.progress import progress_bar

from bintally.data.images import is_image_file, probe_image
from bintally.data.manifest import OK, SCHEMA, read_manifest, write_manifest
from bintally.data.metadata import parse_count, read_metadata
from bintally.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Entry:
    """One photo found in the source, with its label if the source gives one."""

    id: str
    path: str
    meta_path: str | None = None
    count: int | None = None
    n_asins: int | None = None
    label_problem: str = ""


def detect_layout(src: Path) -> str:
    if not src.exists():
        raise DataError(src, "no such file or folder")
    if src.is_file():
        if src.suffix.lower() == ".csv":
            return "csv"
        raise DataError(src, "expected a folder or a .csv of path,count")
    if (src / "bin-images").is_dir():
        return "bucket"
    if not any(src.iterdir()):
        raise DataError(src, "folder is empty")
    return "class-folders"


def bucket_entries(src: Path) -> list[Entry]:
    meta_dir = src / "metadata"
    entries = []
    for img in sorted((src / "bin-images").iterdir()):
        if not is_image_file(img):
            continue
        meta = meta_dir / f"{img.stem}.json"
        entry = Entry(id=img.stem, path=str(img.resolve()), meta_path=str(meta.resolve()))
        if not meta.exists():
            entry.label_problem = "missing-metadata: no metadata/" + meta.name
        else:
            try:
                m = read_metadata(meta)
                entry.count, entry.n_asins = m.count, m.n_asins
            except DataError as e:
                entry.label_problem = f"bad-metadata: {e.problem}"
        entries.append(entry)
    return entries


def class_folder_entries(src: Path) -> list[Entry]:
    entries = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            count, problem = parse_count(folder.name, folder), ""
        except DataError as e:
            count, problem = None, f"bad-label: folder name {folder.name!r}: {e.problem}"
        for img in sorted(folder.iterdir()):
            if is_image_file(img):
                entries.append(Entry(id=img.stem, path=str(img.resolve()), count=count, label_problem=problem))
    return entries


def csv_entries(src: Path) -> list[Entry]:
    try:
        with open(src, newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"path", "count"} <= set(reader.fieldnames):
                raise DataError(src, f"CSV needs columns path,count; found {reader.fieldnames}")
            rows = list(reader)
    except UnicodeDecodeError:
        raise DataError(src, "not a text CSV file") from None
    entries = []
    for line, row in enumerate(rows, start=2):
        img = (src.parent / row["path"]).resolve()
        entry = Entry(id=Path(row["path"]).stem, path=str(img))
        try:
            entry.count = parse_count(row["count"], f"{src}:{line}")
        except DataError as e:
            entry.label_problem = f"bad-label: line {line}: {e.problem}"
        entries.append(entry)
    return entries


def find_entries(src: Path) -> tuple[str, list[Entry]]:
    layout = detect_layout(src)
    entries = {"bucket": bucket_entries, "class-folders": class_folder_entries, "csv": csv_entries}[layout](src)
    if not entries:
        raise DataError(src, f"no images found ({layout} layout)")
    return layout, entries


def probe_all(paths: list[str], workers: int | None = None, progress: bool = True) -> list[dict]:
    workers = workers or min(os.cpu_count() or 1, 8)
    bar = dict(total=len(paths), desc="indexing", unit="img", enabled=progress)
    if workers == 1 or len(paths) < 200:
        return [probe_image(p).as_dict() for p in progress_bar(paths, **bar)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return [f.as_dict() for f in progress_bar(pool.map(probe_image, paths, chunksize=32), **bar)]


def row_status(entry: Entry, problem: str) -> str:
    if problem:
        return f"corrupt: {problem}"
    return entry.label_problem or OK


def build_manifest(src: str | Path, workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Scan `src`, decode every photo and return the manifest table (one row per photo)."""
    src = Path(src)
    layout, entries = find_entries(src)
    facts = probe_all([e.path for e in entries], workers=workers, progress=progress)
    rows = []
    for entry, fact in zip(entries, facts):
        mean, std = fact["channel_mean"], fact["channel_std"]
        rows.append(
            dict(
                id=entry.id, path=entry.path, meta_path=entry.meta_path,
                count=entry.count, n_asins=entry.n_asins,
                width=fact["width"], height=fact["height"], bytes=fact["bytes"],
                sha256=fact["sha256"], phash=fact["phash"],
                mean_r=mean[0], mean_g=mean[1], mean_b=mean[2],
                std_r=std[0], std_g=std[1], std_b=std[2],
                status=row_status(entry, fact["problem"]),
            )
        )
    df = pd.DataFrame(rows, columns=[f.name for f in SCHEMA])
    for col in ("count", "n_asins"):
        df[col] = df[col].astype("Int64")
    df.attrs["info"] = {"source": str(src.resolve()), "layout": layout}
    return df


def read_or_index(data: str | Path | None, progress: bool = True) -> pd.DataFrame:
    """A manifest (.parquet) as it is, a folder or CSV indexed now, or the bundled sample's manifest for None."""
    if data is None:
        from bintally.data.sample import sample_manifest

        data = sample_manifest()
    return read_manifest(data) if Path(data).suffix == ".parquet" else build_manifest(data, progress=progress)


def index_to_manifest(src: str | Path, out: str | Path, workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    df = build_manifest(src, workers=workers, progress=progress)
    write_manifest(df, out, info=df.attrs["info"])
    return df
