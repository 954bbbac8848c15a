"""Files a user keeps: written atomically, and their locations checked before any work starts; files a user gives:
read only when they are regular files, and never past a byte limit (`read_regular`)."""

from __future__ import annotations

import errno
import os
import re
import stat
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bintally.errors import DataError

# a CSV or JSON source a user gives (an audit's records, an index's path,count CSV); photos and metadata have their own
MAX_SOURCE_BYTES = 1_000_000_000
READ_CHUNK = 1 << 20
OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
         (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))

# .<name>.<pid>.<random>.tmp: what atomic_path writes before the rename
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; it replaces `path` on success and is removed on failure.

    Leftovers of earlier writers of the same file that were killed (kill -9) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path.parent, only_for=path.name)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # unique, and created with the usual umask
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temp_files(folder: str | Path, only_for: str | None = None, recursive: bool = False) -> list[Path]:
    """Delete the temporary files of atomic writes whose writer is gone (killed mid-write)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for tmp in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        match = TEMP_PATTERN.match(tmp.name)
        if not match or (only_for is not None and match["name"] != only_for) or pid_alive(int(match["pid"])):
            continue
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_folder(folder: Path, target: Path) -> None:
    """`target` (which lies under `folder`, possibly in folders not made yet) can be created."""
    existing = nearest_existing(folder)
    if not existing.is_dir():
        raise DataError(target, f"cannot be created: {existing} is a file, not a folder")
    try:  # os.access is no use as root or on read-only mounts: try it
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".bintally-write-test-"):
            pass
    except OSError as e:
        raise DataError(target, f"cannot write here ({existing}: {e.strerror or e})") from None


def given_path(path: str | Path, what: str = "path") -> Path:
    """`path` as a Path; an empty string is refused (Path('') would silently mean the current folder)."""
    if isinstance(path, str) and not path.strip():
        raise DataError(repr(path), f"empty {what}: give a file or folder name ('.' for the current folder)")
    return Path(path)


def check_output_file(path: str | Path, suffixes: tuple[str, ...] | None = None) -> Path:
    """Fail now, before any work, if `path` cannot be written as a file (of one of `suffixes`)."""
    path = given_path(path, "output path")
    if path.is_dir():
        raise DataError(path, "is a folder; give a file name")
    if suffixes and path.suffix.lower() not in suffixes:
        raise DataError(path, f"unsupported file type {path.suffix or '(none)'!r}: use {' or '.join(suffixes)}")
    check_writable_folder(path.parent, path)
    return path


def check_output_folder(path: str | Path) -> Path:
    """Fail now, before any work, if `path` cannot be used as an output folder."""
    path = given_path(path, "output folder")
    if path.exists() and not path.is_dir():
        raise DataError(path, "is a file; give a folder")
    check_writable_folder(path, path)
    return path


# ---------------------------------------------------------------- CSV files a spreadsheet opens safely

# OWASP "CSV Injection": a cell starting with = + - @ tab or CR may run as a formula; LF and NUL (ASVS 1.2.10) and the
# full-width forms (which some spreadsheets and input methods turn into the ASCII ones) too
FORMULA_STARTS = "=+-@\t\r\n\0\uff1d\uff0b\uff0d\uff20"
CSV_LINE_END = "\r\n"  # RFC 4180: and so a cell holding a CR is quoted too (with "\n" alone, it is not and starts a row)
PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?", re.ASCII)  # "-3", "+1.5e3": a number, never a formula


def formula_like(text: str) -> bool:
    """Would a spreadsheet read `text` as a formula? Leading spaces do not hide one; a plain number is not one."""
    starts = (text[:1], text.lstrip()[:1])
    return any(start and start in FORMULA_STARTS for start in starts) and not PLAIN_NUMBER.fullmatch(text.strip())


def spreadsheet_safe(value):
    """A text cell as a spreadsheet will show it but never run it: a ' before a formula-like text (and before text that
    only looks like one after its leading 's, so that `spreadsheet_original` gives every text back). Others unchanged."""
    return "'" + value if isinstance(value, str) and formula_like(value.lstrip("'")) else value


def spreadsheet_original(value):
    """The text `spreadsheet_safe` was given: a CSV cell read back, its ' taken off where spreadsheet_safe added one."""
    if isinstance(value, str) and value.startswith("'") and formula_like(value.lstrip("'")):
        return value[1:]
    return value


def safe_frame(frame):
    """A copy of the DataFrame with every text cell (and column name) spreadsheet-safe; numbers stay numbers."""
    from pandas.api.types import is_string_dtype

    text = [c for c in frame.columns if frame[c].dtype == object or is_string_dtype(frame[c])]
    return frame.assign(**{c: frame[c].map(spreadsheet_safe) for c in text}).rename(columns=spreadsheet_safe)


def csv_text(rows: list[dict], columns: list[str]) -> str:
    """Rows (dicts; a missing key is an empty cell) as RFC 4180 CSV text under a header of `columns`, every text cell
    spreadsheet-safe."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=CSV_LINE_END)
    writer.writerow([spreadsheet_safe(c) for c in columns])
    writer.writerows([spreadsheet_safe(row.get(c)) for c in columns] for row in rows)
    return buffer.getvalue()


def write_csv(path: str | Path, rows: list[dict], columns: list[str]) -> Path:
    """`csv_text(rows, columns)` written atomically to `path` as UTF-8."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(csv_text(rows, columns), encoding="utf-8", newline="")
    return path


def write_frame_csv(path: str | Path, frame) -> Path:
    """A DataFrame as RFC 4180 CSV (no index), written atomically, every text cell spreadsheet-safe."""
    path = Path(path)
    with atomic_path(path) as tmp:
        safe_frame(frame).to_csv(tmp, index=False, lineterminator=CSV_LINE_END)
    return path


# ---------------------------------------------------------------- processes that must not outlive their parent

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class JsonError(ValueError):
    """A JSON text Python's parser would take but the standard does not mean: a key twice in one object, NaN or
    Infinity, a number too large for a float."""


def json_object(pairs: list[tuple[str, object]]) -> dict:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise JsonError(f"the key {twice[:40]!r} is given twice in one object")
    return doc


def json_constant(name: str):
    raise JsonError(f"{name} is not a JSON number")


def json_float(text: str) -> float:
    number = float(text)
    if number in (float("inf"), float("-inf")):
        raise JsonError(f"the number {text[:40]} is too large")
    return number


def loads_json(data: bytes | str):
    """A JSON document, read strictly: every reader of JSON a user gives (sources, metadata, request bodies) goes
    through this, so that no value is quietly chosen (Python keeps the last of two equal keys) or made up (NaN, inf).
    JsonError, json.JSONDecodeError (both ValueError) or RecursionError otherwise."""
    import json

    return json.loads(data, object_pairs_hook=json_object, parse_constant=json_constant, parse_float=json_float)


def die_with_parent(parent: int, sig: int | None = None, grace_s: float = 0.0, name: str = "watch-parent") -> None:
    """Send this process `sig` (default SIGKILL) when process `parent` ends, even by kill -9, which the parent cannot
    catch to stop its children: on Linux at once (the parent-death signal), elsewhere when a watching thread sees this
    process handed to another parent; if it still runs `grace_s` seconds after that, it exits. Gone already: exits now."""
    import signal
    import threading
    import time

    sig = signal.SIGKILL if sig is None else sig
    set_parent_death_signal(sig)
    if os.getppid() != parent:  # the parent died before the signal was set
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os.kill(os.getpid(), sig)
        time.sleep(grace_s)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name=name).start()


def set_parent_death_signal(sig: int) -> bool:
    """Ask Linux to send `sig` to this process when its parent ends; False where that cannot be asked."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):  # no C library to load, or one without prctl
        return False

class NoSuchFile(DataError):
    """`read_regular`'s refusal of a path that names nothing."""


class TooLarge(DataError):
    """`read_regular`'s refusal of a file over its byte limit (by its size, or by what it gave while being read)."""


def kind_of(mode: int) -> str:
    return next((kind for is_kind, kind in KINDS if is_kind(mode)), "not a regular file")


def not_regular(mode: int) -> str:
    """The problem of a file with `mode` that is not a regular file ("" for a regular one)."""
    return "" if stat.S_ISREG(mode) else f"is {kind_of(mode)}, not a regular file"


def os_problem(e: OSError | ValueError, what: str, follow_symlinks: bool = True) -> str:
    """One line for why opening or examining a file failed."""
    if isinstance(e, ValueError):  # os functions refuse a path with a NUL byte
        return "the path contains a NUL byte"
    if e.errno == errno.ENOENT:
        return f"no such {what}"
    if e.errno == errno.ENOTDIR:
        return f"no such {what} (a part of its path is not a folder)"
    if e.errno == errno.ELOOP:
        return "a symbolic link loop (or too many links)" if follow_symlinks else "is a symbolic link, which is not followed here"
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"cannot read the {what} (permission denied)"
    if e.errno == errno.EISDIR:
        return "is a folder, not a regular file"
    if e.errno == errno.ENXIO:
        return "is a socket or a device, not a regular file"
    return f"cannot read the {what} ({e.strerror or e})"


def refusal(path: str | Path, problem: str, what: str) -> DataError:
    return (NoSuchFile if problem.startswith(f"no such {what}") else DataError)(path, problem)


def regular_problem(path: str | Path, what: str = "file", follow_symlinks: bool = True) -> str:
    """Why `path` is not a regular file that can be read ("" when it is), from its status alone: nothing is opened.

    For folder walks, so that a FIFO, a device or a socket among the photos is reported, never opened."""
    try:
        info = os.stat(path) if follow_symlinks else os.lstat(path)
    except (OSError, ValueError) as e:
        return os_problem(e, what, follow_symlinks)
    return not_regular(info.st_mode)


def open_regular(path: str | Path, what: str = "file", follow_symlinks: bool = True) -> int:
    """A file descriptor of the regular file `path`, or DataError (NoSuchFile when it is missing) saying what it is.

    A FIFO, a device or a socket is refused by its status before it is opened, and again by the open descriptor's (it may
    have been swapped in between); the open never waits (O_NONBLOCK) nor takes a terminal (O_NOCTTY)."""
    problem = regular_problem(path, what, follow_symlinks)
    if problem:
        raise refusal(path, problem, what)
    try:
        fd = os.open(path, OPEN_FLAGS | (0 if follow_symlinks else getattr(os, "O_NOFOLLOW", 0)))
    except (OSError, ValueError) as e:
        raise refusal(path, os_problem(e, what, follow_symlinks), what) from None
    problem = not_regular(os.fstat(fd).st_mode)
    if problem:
        os.close(fd)
        raise DataError(path, problem)
    return fd


def read_regular(path: str | Path, limit: int, what: str = "file", follow_symlinks: bool = True, hint: str = "") -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; else DataError naming the file and the problem.

    Refused: a folder, a FIFO, a device, a socket (nothing of theirs is read), a symbolic link loop, a file over `limit`
    bytes by its size, or by what it gives while being read (a file that grows, a /proc file whose size says 0): no
    more than `limit` + 1 bytes are ever read. `hint` follows the too-large refusal (how to raise the limit)."""
    fd = open_regular(path, what, follow_symlinks)
    try:
        size = os.fstat(fd).st_size
        if size > limit:
            raise TooLarge(path, f"larger than the limit of {limit:,} bytes ({size:,} bytes){hint}")
        data = read_at_most(fd, limit + 1)
    except OSError as e:
        raise DataError(path, os_problem(e, what, follow_symlinks)) from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise TooLarge(path, f"grew past the limit of {limit:,} bytes while it was read{hint}")
    return data


def read_at_most(fd: int, limit: int) -> bytes:
    """What `fd` gives up to its end or `limit` bytes, whichever comes first."""
    chunks, total = [], 0
    while total < limit:
        chunk = os.read(fd, min(READ_CHUNK, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)
