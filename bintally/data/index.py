"""`bintally data index`: turn a folder of bin photos into a manifest.

Three layouts are understood:
- bucket: `bin-images/<id>.jpg` with `metadata/<id>.json` (the public ABID bucket, or a mirror);
- class folders: `<count>/<name>.jpg`;
- a CSV with columns `path,count` (paths relative to the CSV).

A photo that cannot be used (missing, corrupt, too large, unlabelled) is kept as a row whose status
says why; only a source that cannot be read at all is an error.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import multiprocessing
import os
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bintally.data.images import IMAGE_SUFFIXES, ImageFacts, probe_image
from bintally.data.manifest import OK, SCHEMA, usable, write_manifest
from bintally.data.metadata import parse_count, read_metadata
from bintally.errors import ConfigError, DataError
from bintally.io import MAX_SOURCE_BYTES, check_output_file, die_with_parent, given_path, read_regular, regular_problem, spreadsheet_original
from bintally.progress import progress_bar

log = logging.getLogger("bintally.data")

LAYOUTS = ("bintally reads a bucket folder (bin-images/<id>.jpg with metadata/<id>.json), "
           "class folders (<count>/<name>.jpg) or a CSV with columns path,count")
POOL_MIN_PHOTOS = 200  # fewer photos are decoded in this process: starting workers would cost more than it saves
CHUNK = 8  # photos per task: small, so that a stopped run waits little for the chunks its workers hold


@dataclass
class Entry:
    """One photo found in the source, with its label if the source gives one."""

    id: str
    path: str
    meta_path: str | None = None
    count: int | None = None
    n_asins: int | None = None
    label_problem: str = ""  # the photo is decoded, but has no usable label
    file_problem: str = ""  # the photo cannot be decoded at all (no file, no path): it is not tried


def absolute(path: Path) -> str:
    """The photo's absolute path; a link stays the link (its target may be missing or a loop, which its row says)."""
    try:
        return str(path.parent.resolve() / path.name)
    except (OSError, RuntimeError, ValueError):  # a folder link loop, a NUL in a CSV path
        return os.path.abspath(path)


def missing_file_problem(path: str) -> str:
    """Why the photo at `path` is not tried ("" when it is a regular file): missing, or a folder, FIFO, device or socket,
    found from its status alone (such a file is never opened)."""
    if not os.path.exists(path):
        return "missing: broken or looping link" if os.path.islink(path) else "missing: no such file"
    problem = regular_problem(path, "image")
    return f"unreadable: {problem}" if problem else ""


def photo_files(folder: Path) -> list[Path]:
    """The photos of one folder by name (broken links included, so that they are reported), sorted."""
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and not p.is_dir())


def detect_layout(src: Path) -> str:
    if not src.exists():
        raise DataError(src, "no such file or folder")
    if not src.is_dir():
        if src.suffix.lower() == ".csv":
            return "csv"
        if src.suffix.lower() == ".parquet":
            raise DataError(src, "is a manifest already (give it to `bintally data split`, `check` or `report`); "
                                 f"index reads photos: {LAYOUTS}")
        raise DataError(src, f"expected a folder or a .csv of path,count: {LAYOUTS}")
    if (src / "bin-images").is_dir():
        return "bucket"
    if not any(src.iterdir()):
        raise DataError(src, f"folder is empty; {LAYOUTS}")
    return "class-folders"


def bucket_entries(src: Path) -> list[Entry]:
    meta_dir = src / "metadata"
    entries = []
    for img in photo_files(src / "bin-images"):
        meta = meta_dir / f"{img.stem}.json"
        entry = Entry(id=img.stem, path=absolute(img), meta_path=absolute(meta))
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
    """Photos in <count>/ folders; loose photos beside those folders are listed as unlabelled."""
    entries = []
    for folder in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            count, problem = parse_count(folder.name, folder), ""
        except DataError as e:
            count, problem = None, f"bad-label: folder name {folder.name!r}: {e.problem}"
        for img in photo_files(folder):
            entries.append(Entry(id=img.stem, path=absolute(img), count=count, label_problem=problem))
    if not entries:
        return []  # a flat folder of photos: not this layout (see no_images_problem)
    loose = [Entry(id=img.stem, path=absolute(img), label_problem="bad-label: not in a <count>/ folder")
             for img in photo_files(src)]
    return loose + entries


def csv_encoding(data: bytes) -> str:
    """UTF-8 (with or without a byte-order mark), or UTF-16 when a spreadsheet marked it so."""
    return "utf-16" if data[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"


def csv_rows(src: Path) -> list[tuple[int, dict]]:
    """(line number, row) of a path,count CSV, as a spreadsheet may save it: BOM, CRLF, padded or capitalised headers."""
    data = read_regular(src, MAX_SOURCE_BYTES, "CSV")
    try:
        with io.StringIO(data.decode(csv_encoding(data)), newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames:
                raise DataError(src, "CSV is empty; expected a header line path,count and one line per photo")
            header = [(name or "").strip().lower() for name in reader.fieldnames]
            if not {"path", "count"} <= set(header):
                raise DataError(src, f"CSV needs columns path,count; found {reader.fieldnames}")
            reader.fieldnames = header
            return [(reader.line_num, row) for row in reader]
    except UnicodeDecodeError:
        raise DataError(src, "not a text CSV file (expected UTF-8, or UTF-16 with a byte-order mark)") from None
    except csv.Error as e:
        raise DataError(src, f"not a readable CSV (line {reader.line_num}: {e})") from None


def csv_entries(src: Path) -> list[Entry]:
    entries = []
    for line, row in csv_rows(src):
        path, count = spreadsheet_original((row.get("path") or "").strip()), (row.get("count") or "").strip()
        if not path and not count:
            continue  # a blank line of a spreadsheet
        if not path:
            entries.append(Entry(id=f"line-{line}", path=f"{src}:{line}", file_problem="bad-row: no path"))
            continue
        entry = Entry(id=Path(path).stem, path=absolute(src.parent / path))
        try:
            entry.count = parse_count(count, f"{src}:{line}")
        except DataError as e:
            entry.label_problem = f"bad-label: line {line}: {e.problem}"
        entries.append(entry)
    return entries


def no_images_problem(src: Path, layout: str) -> str:
    loose = photo_files(src) if src.is_dir() else []
    if loose:
        return f"holds {len(loose)} photo(s) but no counts for them; {LAYOUTS}"
    return f"no images found ({layout} layout); {LAYOUTS}"


def find_entries(src: Path) -> tuple[str, list[Entry]]:
    layout = detect_layout(src)
    entries = {"bucket": bucket_entries, "class-folders": class_folder_entries, "csv": csv_entries}[layout](src)
    if not entries:
        raise DataError(src, no_images_problem(src, layout))
    for entry in entries:
        entry.file_problem = entry.file_problem or missing_file_problem(entry.path)
    return layout, entries


def init_worker(parent: int) -> None:
    """Ctrl-C and SIGTERM are the indexer's to handle (it stops the workers); a worker only dies with it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    die_with_parent(parent, name="watch-indexer")


def probe_all(paths: list[str], workers: int | None = None, progress: bool = True) -> list[dict]:
    workers = min(os.cpu_count() or 1, 8) if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    bar = dict(total=len(paths), desc="indexing", unit="img", enabled=progress)
    if workers == 1 or len(paths) < POOL_MIN_PHOTOS:
        return [probe_image(p).as_dict() for p in progress_bar(paths, **bar)]
    context = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    workers = min(workers, -(-len(paths) // CHUNK))  # no idle workers (a fork each)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=init_worker, initargs=(os.getpid(),))
    try:
        facts = [f.as_dict() for f in progress_bar(pool.map(probe_image, paths, chunksize=CHUNK), **bar)]
    except BaseException:
        # drop the queued work; each worker ends after the chunk it holds (killing them instead trips a race in
        # Python 3.11's pool, whose thread then reports an InvalidStateError)
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown()
    return facts


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops indexing as Ctrl-C does (KeyboardInterrupt: workers stopped, nothing written).

    Only where SIGTERM would otherwise kill the process: a handler already in place (the CLI's) is kept.
    """
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


def row_status(entry: Entry, problem: str) -> str:
    if entry.file_problem:
        return entry.file_problem
    if problem:
        return problem if problem.startswith("unreadable") else f"corrupt: {problem}"
    return entry.label_problem or OK


def build_manifest(src: str | Path, workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Scan `src`, decode every photo and return the manifest table (one row per photo)."""
    src = given_path(src, "data path")
    with sigterm_as_interrupt():  # the workers are stopped and nothing is written
        layout, entries = find_entries(src)
        decodable = [e.path for e in entries if not e.file_problem]
        probed = iter(probe_all(decodable, workers=workers, progress=progress))
    rows = []
    for entry in entries:
        fact = ImageFacts().as_dict() if entry.file_problem else next(probed)
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


def report_unusable(df: pd.DataFrame) -> None:
    """One warning per unusable photo (`path: status`) and a count, as `bintally data index` prints them."""
    bad = df[~usable(df)]
    for row in bad.itertuples():
        log.warning("%s: %s", row.path, row.status)
    source = df.attrs.get("info", {}).get("source", "the data")
    if len(bad):
        log.warning("%d usable photos, %d unusable (left out) in %s", len(df) - len(bad), len(bad), source)
    else:
        log.info("%d usable photos in %s", len(df), source)


def index_to_manifest(src: str | Path, out: str | Path, workers: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Index `src` and write the manifest to `out` (checked before any work: a writable .parquet file, not a folder)."""
    check_output_file(out, (".parquet",))
    with sigterm_as_interrupt():
        df = build_manifest(src, workers=workers, progress=progress)
        write_manifest(df, out, info=df.attrs["info"])
    return df
