"""A real `bintally serve` process on loopback for the tests that talk HTTP to it (v2 protocol, web page, fuzzing)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.helpers import free_port

QUIET_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": "100000000000", "MALLOC_TOP_PAD_": "1000000000",
             "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


class Server:
    def __init__(self, url: str, process: subprocess.Popen, log: Path):
        self.url, self.process, self.log = url, process, log
        self.host_port = url.removeprefix("http://")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@contextmanager
def running_server(model, *args, backend: str = "torch", env: dict | None = None, ready_timeout: float = 90.0):
    """`python -m bintally serve --model MODEL --backend BACKEND --port <free> ARGS...` until /v2/health/ready says 200.

    Yields a `Server` (its `.url` is http://127.0.0.1:PORT); SIGTERM at the end (then SIGKILL after 15 s).
    """
    for attempt in range(3):  # a free port can be taken by someone else between the probe and the bind
        port = free_port()
        log = Path(tempfile.mkstemp(prefix="bintally-serve-", suffix=".log")[1])
        cmd = [sys.executable, "-m", "bintally", "serve", "--model", str(model), "--backend", backend, "--port", str(port),
               "--threads", "1", *map(str, args)]
        with open(log, "wb") as out:
            process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ | QUIET_ENV | (env or {}))
        server = Server(f"http://127.0.0.1:{port}", process, log)
        deadline = time.monotonic() + ready_timeout
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(f"{server.url}/v2/health/ready", timeout=2).status_code == 200:
                    ready = True
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        if ready:
            break
        stop(process)
        if "cannot listen" in server.log_tail() and attempt < 2:
            continue
        raise AssertionError(f"the server did not become ready in {ready_timeout:g} s (exit {process.poll()}):\n{server.log_tail()}")
    try:
        yield server
    finally:
        stop(process)
        log.unlink(missing_ok=True)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


# One server shared by the protocol tests (test_serving_v2, test_web_page, test_serving_fuzz): starting one costs
# seconds of torch import and model load, so it starts once per pytest session and stops when the session ends.
API_KEY = "b2-test-key-0123456789"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_IMAGES = 8
SHARED_ARGS = ("--max-images", MAX_IMAGES, "--max-batch-size", 8, "--max-wait-ms", 2)
_shared: dict = {}


def shared_server(pytestconfig, model, backend: str = "torch") -> Server:
    """The tiny model behind `bintally serve` with an API key and --max-images 8 (started on first use)."""
    key = (str(model), backend)
    server = _shared.get(key)
    if server is None or server.process.poll() is not None:
        context = running_server(model, *SHARED_ARGS, backend=backend, env={"BINTALLY_API_KEY": API_KEY})
        server = context.__enter__()
        _shared[key] = server
        pytestconfig.add_cleanup(lambda: context.__exit__(None, None, None))
    return server


# One server with an audit store (test_audit_http, test_audit_dashboard), in a thread of the test process (no second
# torch import): the API key, a fresh SQLite file per session, and --file-root at the bundled sample's photos (so file://
# snapshots inside it are served and others refused).
_audit: dict = {}


def audit_server(pytestconfig, model, tmp_path_factory, backend: str = "torch"):
    """The tiny model behind the app of `bintally serve --audit-db <tmp>/audit.db --file-root <sample photos>` on loopback
    (a `ServerThread`, started on first use; its `.url` is http://127.0.0.1:PORT)."""
    from bintally.paths import SAMPLE_DIR
    from bintally.serving.config import ServeConfig
    from tests.serving_threads import ServerThread

    server = _audit.get("server")
    if server is None or not server.thread.is_alive():
        db = tmp_path_factory.mktemp("audit-db") / "audit.db"
        config = ServeConfig(model=str(model), backend=backend, threads=1, api_key=API_KEY, audit_db=str(db),
                             file_root=str(SAMPLE_DIR / "bin-images")).validate()
        server = ServerThread(config).__enter__()
        server.audit_db = db
        _audit["server"] = server
        pytestconfig.add_cleanup(lambda: server.__exit__(None, None, None))
    return server


def sample_photo(name: str) -> tuple[Path, int]:
    """A bundled ABID photo and the EXPECTED_QUANTITY its metadata records."""
    import json

    from bintally.paths import SAMPLE_DIR

    photo = SAMPLE_DIR / "bin-images" / name
    return photo, json.loads((SAMPLE_DIR / "metadata" / f"{photo.stem}.json").read_text())["EXPECTED_QUANTITY"]
