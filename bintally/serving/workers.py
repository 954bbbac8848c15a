"""Worker processes of `bintally serve --workers N` end with their supervisor, even when it is killed with kill -9.

The supervisor names itself in an environment variable before it starts the workers; each worker, as it builds its
app, asks for SIGTERM when that process ends (uvicorn's graceful stop), and exits outright if it still runs later.
"""

from __future__ import annotations

import os
import signal

from bintally.io import die_with_parent

SUPERVISOR_ENV = "BINTALLY_SERVE_SUPERVISOR"
EXIT_AFTER_S = 10.0  # past the graceful stop's own limit: a worker whose supervisor is gone exits by then at the latest


def graceful_stop_s(config) -> float:
    """How long a stopping server lets the requests in flight finish: their time limit, and a little more."""
    return config.timeout_s + 5


def name_supervisor() -> None:
    """In the supervisor, before it starts workers: this process is the one they live by."""
    os.environ[SUPERVISOR_ENV] = str(os.getpid())


def end_with_supervisor(graceful_s: float) -> None:
    """In a worker: SIGTERM when the supervisor ends, then exit if the graceful stop (up to `graceful_s`) has not."""
    supervisor = os.environ.get(SUPERVISOR_ENV, "")
    if supervisor.isdigit():
        die_with_parent(int(supervisor), signal.SIGTERM, grace_s=graceful_s + EXIT_AFTER_S, name="watch-supervisor")
