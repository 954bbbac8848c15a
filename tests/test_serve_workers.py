"""Processes that must not outlive their parent: `bintally serve --workers 2` after a kill -9 of its supervisor, and
the parent-death helper (bintally.io.die_with_parent) on its own, with and without the Linux parent-death signal."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import free_port, process_group, wait_for
from tests.servers import QUIET_ENV, answers_ping

GONE_WITHIN_S = 15
CHILD_ENV = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}  # this checkout's bintally


def start_server(model, port: int, log) -> subprocess.Popen:
    """`bintally serve --workers 2` in a process group of its own, its log in the file `log`."""
    return subprocess.Popen([sys.executable, "-m", "bintally", "serve", "--model", str(model), "--backend", "onnx", "--port", str(port),
                             "--threads", "1", "--workers", "2"], stdout=log, stderr=subprocess.STDOUT, env=os.environ | QUIET_ENV,
                            start_new_session=True)


def workers_of(process: subprocess.Popen) -> list[int]:
    """The uvicorn worker processes (multiprocessing spawns them) in the server's process group."""
    return [pid for pid, (_, command) in process_group(process.pid).items() if b"spawn_main" in command]


def serving(process: subprocess.Popen, url: str, log_path) -> None:
    """Wait until both workers run and one answers; fail with the log if the server never does."""
    ready = wait_for(lambda: answers_ping(url) and len(workers_of(process)) == 2, 180, process)
    assert ready, f"the server did not start (exit {process.poll()}):\n{log_path.read_text()[-3000:]}"


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as `bintally serve` binds: TIME_WAIT does not count
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
def test_workers_end_with_a_killed_supervisor_and_the_port_serves_again(tiny_artifact, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    with open(first_log, "w") as log:
        first = start_server(tiny_artifact.path, port, log)
    try:
        serving(first, url, first_log)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        left = wait_for(lambda: not process_group(first.pid), GONE_WITHIN_S) or process_group(first.pid)
        assert left is True, f"still running {GONE_WITHIN_S} s after the supervisor was killed: {left}\n{first_log.read_text()[-3000:]}"
        assert not answers_ping(url)
        assert port_is_free(port), f"port {port} still held after the workers ended"
    finally:
        kill_group(first.pid)
    with open(second_log, "w") as log:
        second = start_server(tiny_artifact.path, port, log)
    try:
        serving(second, url, second_log)
        second.send_signal(signal.SIGTERM)
        assert second.wait(60) == 0, second_log.read_text()[-3000:]
        assert wait_for(lambda: not process_group(second.pid), GONE_WITHIN_S), process_group(second.pid)
        assert "Address already in use" not in second_log.read_text()
    finally:
        kill_group(second.pid)


# A parent (this script) starts a child that calls die_with_parent on it, tells its pid, then sleeps; the test kills the parent.
PARENT = textwrap.dedent("""
    import subprocess, sys, time
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
    print(child.pid, flush=True)
    time.sleep(120)
""")
CHILD = textwrap.dedent("""
    import os, signal, sys, time
    import bintally.io as io
    if {no_prctl}:
        io.set_parent_death_signal = lambda sig: False  # as on a system without prctl: only the watching thread
    signal.signal(signal.SIGTERM, lambda s, f: (open({flag!r}, "w").write("SIGTERM"), sys.exit(0)) if {graceful} else None)
    io.die_with_parent(os.getppid(), signal.SIGTERM, grace_s=1)
    time.sleep(120)
""")


def child_of_killed_parent(tmp_path, no_prctl: bool, graceful: bool) -> tuple[int, str]:
    """Kill -9 a parent whose child watches it; (seconds until the child is gone, what the child's SIGTERM handler wrote)."""
    flag = tmp_path / f"flag-{no_prctl}-{graceful}"
    child_code = CHILD.format(no_prctl=no_prctl, flag=str(flag), graceful=graceful)
    parent = subprocess.Popen([sys.executable, "-c", PARENT, child_code], stdout=subprocess.PIPE, text=True,
                              env=CHILD_ENV, start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        time.sleep(1.5)  # the child has imported bintally.io and is watching
        assert process_group(parent.pid).keys() == {parent.pid, child}
        parent.kill()
        parent.wait(10)
        started = time.monotonic()
        assert wait_for(lambda: child not in process_group(parent.pid), 10), "the child outlived its parent"
        return time.monotonic() - started, flag.read_text() if flag.exists() else ""
    finally:
        kill_group(parent.pid)


@pytest.mark.parametrize("no_prctl", [False, True], ids=["prctl", "watching-thread"])
def test_a_child_gets_sigterm_when_its_parent_is_killed(tmp_path, no_prctl):
    took, flag = child_of_killed_parent(tmp_path, no_prctl, graceful=True)
    assert flag == "SIGTERM" and took < 3


def test_a_child_that_ignores_sigterm_still_exits_after_the_grace(tmp_path):
    took, flag = child_of_killed_parent(tmp_path, no_prctl=False, graceful=False)
    assert flag == "" and took < 5


def test_a_child_whose_parent_is_already_gone_exits_at_once(tmp_path):
    code = "import bintally.io as io, time; io.die_with_parent(1, grace_s=60); time.sleep(60)"  # its parent is not pid 1
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], env=CHILD_ENV, timeout=30)
    assert done.returncode == 1 and time.monotonic() - started < 20
