"""Files a user keeps: written atomically, and their locations checked before any work starts."""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bintally.errors import DataError

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
