"""Run directories: never clobbered, never shared by two live runs, never left looking like a run after a failed start;
the config a resumed run goes on with.

A run directory holds config.json, metrics.jsonl, checkpoints/last.pt, model/ and the rest. The
process that trains into it holds an exclusive lock on RUN/.lock (an flock: the kernel drops it
when the process dies, kill -9 included); the lock file names the holder for the error message.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import socket
import time
from pathlib import Path

from bintally.errors import ConfigError, DataError
from bintally.io import check_output_folder, remove_stale_temp_files
from bintally.training.config import EXTENDABLE, RESUMABLE_CHANGES, TrainConfig, config_differences

DEFAULT_PARENT = Path("runs") / "train"
RUN_MARKERS = ("config.json", "model/model.json", "metrics.jsonl", "checkpoints/last.pt", "result.json")
# everything a run writes: what --overwrite deletes (other files in the folder are left alone)
RUN_FILES = (*RUN_MARKERS, "model", "checkpoints", "health.json", "model_card.md", "manifest.parquet", "profile")
LOCK_NAME = ".lock"


def holds_run(folder: Path) -> bool:
    return any((folder / marker).exists() for marker in RUN_MARKERS)


def next_numbered(parent: Path = DEFAULT_PARENT) -> Path:
    """parent/run-001, run-002, ...: one past the highest number there (experiment-tracker style)."""
    numbers = [int(m[1]) for p in parent.glob("run-*") if (m := re.fullmatch(r"run-(\d+)", p.name))] if parent.is_dir() else []
    return parent / f"run-{max(numbers, default=0) + 1:03d}"


class RunLock:
    """An exclusive flock on RUN/.lock; the second process gets a one-line error naming the holder."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.describe_holder(fd)
            os.close(fd)
            raise ConfigError(f"{self.path.parent}: another bintally train is using this run ({holder}); "
                              f"wait for it to end, or choose another --out") from None
        self.fd = fd
        return self

    def claim(self) -> None:
        """Name this process as the holder (only once it has decided to train here)."""
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                       "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode(), 0)

    @staticmethod
    def describe_holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0) or b"{}")
            return f"pid {info['pid']} on {info['host']}, started {info['started']}"
        except (ValueError, KeyError, OSError):
            return "holder unknown"

    def release(self) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


class RunDir:
    """The folder of one run, locked while this process trains into it.

    `new` refuses a folder that already holds a run unless `overwrite`; `resume` needs one.
    If the run fails before it has saved anything (`started` is never called), the folder is
    removed again when this process created it.
    """

    def __init__(self, path: Path, created: bool, lock: RunLock):
        self.path, self.created, self.lock, self.saved_something = path, created, lock, False

    @classmethod
    def new(cls, out: str | Path | None, overwrite: bool = False) -> "RunDir":
        path = Path(out) if out is not None else next_numbered()
        check_output_folder(path)
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        lock = RunLock(path).acquire()
        if holds_run(path):
            if not overwrite:
                lock.release()
                raise DataError(path, f"already holds a run ({describe_run(path)}); continue it with "
                                      f"`bintally train --resume {path}`, replace it with --overwrite, or choose another --out")
            clear_run(path)
        lock.claim()
        run = cls(path, created, lock)
        run.tidy()
        return run

    @classmethod
    def resume(cls, path: str | Path) -> "RunDir":
        path = Path(path)
        if path.is_file():
            raise DataError(path, "is a file; --resume takes the run directory (the one holding checkpoints/last.pt)")
        if not path.is_dir():
            raise DataError(path, "no such run directory to resume")
        lock = RunLock(path).acquire()  # first: a run being written by another process says so
        if not (path / "checkpoints" / "last.pt").is_file():
            lock.release()
            raise DataError(path, "nothing to resume (no checkpoints/last.pt); start a new run with --out")
        lock.claim()
        run = cls(path, created=False, lock=lock)
        run.saved_something = True
        run.tidy()
        return run

    def tidy(self) -> None:
        """Remove what a killed process left half-written (atomic writes' temporary files)."""
        remove_stale_temp_files(self.path, recursive=True)

    def started(self) -> None:
        """Something worth keeping (a checkpoint or a model) is on disk now."""
        self.saved_something = True

    def close(self, failed: bool) -> None:
        if failed and self.created and not self.saved_something:
            shutil.rmtree(self.path, ignore_errors=True)  # a failed start must not look like a run later
        self.lock.release()


def describe_run(path: Path) -> str:
    try:
        config = json.loads((path / "config.json").read_text())
        what = f"{config.get('mode', '?')} {config.get('backbone', '?')}, {config.get('epochs', '?')} epochs"
    except (OSError, ValueError, AttributeError):
        what = "no readable config.json"
    finished = (path / "result.json").exists()
    return f"{what}, {'finished' if finished else 'not finished'}"


def clear_run(path: Path) -> None:
    """--overwrite: delete the old run's files, and nothing else."""
    for name in RUN_FILES:
        child = path / name
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        elif child.exists() or child.is_symlink():
            child.unlink()


def saved_config(run_dir: Path) -> TrainConfig:
    path = run_dir / "config.json"
    try:
        values = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise DataError(path, "missing: this run cannot be resumed without its config") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"malformed JSON ({e}); this run cannot be resumed") from None
    if not isinstance(values, dict):
        raise DataError(path, "expected a JSON object of settings")
    return TrainConfig.from_dict(values, source=path)


def resumed_config(run_dir: Path, explicit: dict) -> TrainConfig:
    """The saved config with what a resume may change (workers, device, more epochs ...); anything else is refused."""
    saved = saved_config(run_dir)
    differences = config_differences(saved, explicit)
    if differences:
        listed = "; ".join(f"{k}: run has {a!r}, you asked for {b!r}" for k, (a, b) in differences.items())
        raise ConfigError(f"{run_dir}: cannot resume a run with a different config ({listed})")
    if explicit.get("epochs") is not None and explicit["epochs"] < saved.epochs:
        raise ConfigError(f"{run_dir}: the run has {saved.epochs} epochs; a resume may add epochs, not remove them")
    overrides = {k: v for k, v in explicit.items() if v is not None and k in RESUMABLE_CHANGES | EXTENDABLE}
    overrides["max_steps"] = explicit.get("max_steps")  # a smoke-run limit does not carry over
    return TrainConfig.from_dict(saved.to_dict() | overrides | {"out": str(run_dir)})
