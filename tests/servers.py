"""The one way the tests start a server: fixtures, each stopping what it started when its scope ends.

    serve(config, load=True)      the app `bintally serve` runs, on loopback in a thread of this process
                                  (a `ServerThread`): no new interpreter, no second torch import;
                                  stopped after the test. `serve_module` and `serve_session` are the
                                  same for servers that a module's or the whole session's tests share.
    serve_process(model, *args)   a real `python -m bintally serve` process, for what only a process
                                  has (signals, --workers): a `ServerProcess`, killed after the test
                                  if still running.
    protocol_server               the session's server for the protocol tests (v2, web page, fuzzing).
    audit_server                  the session's server with an audit store (HTTP API and dashboard).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack
from typing import NamedTuple

import httpx
import pytest

from tests.helpers import free_port, wait_for

QUIET_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_TOP_PAD_": "1000000000",
             "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
API_KEY = "b2-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_IMAGES = 8


def starting_servers() -> Iterator:
    """A function `start(config, load=True) -> ServerThread` whose servers stop when the generator ends."""
    from tests.serving_threads import ServerThread

    with ExitStack() as stack:
        yield lambda config, load=True: stack.enter_context(ServerThread(config, load))


@pytest.fixture
def serve():
    yield from starting_servers()


@pytest.fixture(scope="module")
def serve_module():
    yield from starting_servers()


@pytest.fixture(scope="session")
def serve_session():
    yield from starting_servers()


@pytest.fixture(scope="session")
def protocol_server(serve_session, tiny_artifact):
    """The tiny model on PyTorch with an API key and at most 8 images a request, shared by the protocol tests."""
    from bintally.serving.config import ServeConfig

    return serve_session(ServeConfig(model=str(tiny_artifact.path), backend="torch", threads=1, api_key=API_KEY, max_images=MAX_IMAGES,
                                     max_batch_size=8, max_wait_ms=2))


@pytest.fixture(scope="session")
def audit_server(serve_session, tiny_artifact, tmp_path_factory):
    """The tiny model on PyTorch with the API key, a fresh SQLite audit store (`.audit_db`) and --file-root at the
    bundled sample's photos (so file:// snapshots inside it are served and others refused). `--audit-auth open`: the
    API key guards the audit API and names come from the requests (users and roles: tests/test_audit_permissions.py)."""
    from bintally.paths import SAMPLE_DIR
    from bintally.serving.config import ServeConfig

    db = tmp_path_factory.mktemp("audit-db") / "audit.db"
    server = serve_session(ServeConfig(model=str(tiny_artifact.path), backend="torch", threads=1, api_key=API_KEY, audit_db=str(db),
                                       audit_auth="open", file_root=str(SAMPLE_DIR / "bin-images")).validate())
    server.audit_db = db
    return server


def answers_ping(url: str) -> bool:
    """Does the server at `url` answer /ping with 200?"""
    try:
        return httpx.get(url + "/ping", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class ServerProcess(NamedTuple):
    process: subprocess.Popen  # its stdout and stderr together, as text, in process.stdout
    url: str


@pytest.fixture
def serve_process():
    """start(model, *args, backend="onnx") -> ServerProcess: `python -m bintally serve` on a free port, once /ping says 200."""
    started: list[subprocess.Popen] = []

    def start(model, *args, backend: str = "onnx") -> ServerProcess:
        port = free_port()
        process = subprocess.Popen([sys.executable, "-m", "bintally", "serve", "--model", str(model), "--backend", backend,
                                    "--port", str(port), "--threads", "1", *map(str, args)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=os.environ | QUIET_ENV)
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        if wait_for(lambda: answers_ping(url), 120, process):
            return ServerProcess(process, url)
        process.kill()
        raise AssertionError(f"the server did not start (exit {process.poll()}): {process.communicate()[0][-3000:]}")

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate()
