"""Small helpers shared by the test files: ports, waiting, process groups, forged images, needed outside things."""

from __future__ import annotations

import csv
import io
import os
import socket
import struct
import subprocess
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest


def required_or_skip(message: str) -> None:
    """What a test does without something it needs from outside the repository: skip, saying why; fail under CI=true."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def free_port() -> int:
    """A loopback port free now (someone else may take it before it is bound: callers retry)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, process: subprocess.Popen | None = None) -> bool:
    """Poll `condition` until it holds (True), or `timeout` seconds pass or `process` exits first (its value then)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and (process is None or process.poll() is None):
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


def process_group(pgid: int) -> dict[int, tuple[int, bytes]]:
    """The live (not zombie) processes of a process group, from /proc: pid -> (parent pid, command line)."""
    members = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            command = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):  # gone meanwhile
            continue
        if int(group) == pgid and state != "Z":
            members[int(stat.parent.name)] = (int(ppid), command)
    return members


def png_bomb(width: int, height: int) -> bytes:
    """A valid, tiny PNG whose header declares width x height pixels (the pixel data would be gigabytes)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = 8  # after the signature: length(4) 'IHDR'(4) data(13) crc(4)
    struct.pack_into(">II", data, ihdr + 8, width, height)
    struct.pack_into(">I", data, ihdr + 8 + 13, zlib.crc32(bytes(data[ihdr + 4: ihdr + 8 + 13])))
    return bytes(data)


def snapshot_csv(rows: list[tuple]) -> str:
    """A totals CSV (bin_id,image,record_qty) of `rows`, as an audit source or upload."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["bin_id", "image", "record_qty"])
    writer.writerows(rows)
    return out.getvalue()
