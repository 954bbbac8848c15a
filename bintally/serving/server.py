"""Running the app on uvicorn: one process, or `workers` processes sharing one listening socket.

The socket is bound here, before any worker starts, so a port in use is one clear error; SIGTERM
(or Ctrl-C) makes the server not ready at once, lets the requests in flight finish, and exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from typing import TYPE_CHECKING

from bintally.errors import ConfigError
from bintally.serving.config import CONFIG_ENV, ServeConfig
from bintally.serving.workers import graceful_stop_s, name_supervisor

if TYPE_CHECKING:  # imported when serving starts: `bintally serve --help` stays quick
    from bintally.audit.store import Store
    from bintally.serving.dataplane import DataPlane

log = logging.getLogger("bintally.serving")
STARTUP_FAILURE = 3  # uvicorn's exit code of a worker that failed before serving
FACTORY = "bintally.serving.app:create_app_from_env"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def open_audit_store(config: ServeConfig):
    """The audit store of --audit-db (schema upgraded), or None without it; ConfigError in one line if it cannot be opened."""
    if not config.audit_db:
        return None
    from bintally.audit.store import open_store, shown

    store = open_store(config.audit_db)
    log.info("audit store %s open (dashboard at /audit)", shown(config.audit_db))
    return store


def uvicorn_config(app, config: ServeConfig, **extra):
    import uvicorn

    return uvicorn.Config(app, host=config.host, port=config.port, workers=config.workers, log_level=config.log_level,
                          timeout_graceful_shutdown=graceful_stop_s(config), timeout_keep_alive=5, server_header=False,
                          date_header=True, proxy_headers=False, access_log=config.log_level == "debug", **extra)


def serve(config: ServeConfig) -> int:
    """Check the config, the port and the model (each failure a one-line ConfigError/DataError before the server
    listens), then serve until SIGTERM/SIGINT; 0 after a graceful stop."""
    from bintally.models.artifact import read_artifact

    config.validate()
    read_artifact(config.model)  # a missing or damaged model.json: one line, before the port is touched
    sock, plane, store = prepare(config)
    shown = f"[{config.host}]" if ":" in config.host else config.host
    log.info("serving http://%s:%d with %d worker%s (API docs at /docs)", shown, config.port, config.workers,
             "" if config.workers == 1 else "s")
    stops = []
    previous = {sig: signal.signal(sig, lambda s, f: stops.append(s)) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        if config.workers == 1:
            return serve_in_process(config, sock, plane, store)
        return serve_with_workers(config, sock, plane, store)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()


def prepare(config: ServeConfig) -> tuple[socket.socket, DataPlane, Store | None]:
    """(the bound socket, the loaded data plane, the audit store or None); on a failure, what was opened is closed."""
    from bintally.serving.dataplane import DataPlane

    store = open_audit_store(config)  # --audit-db: opened and its schema upgraded once, before the port (a bad URL: one line)
    try:
        sock = bind(config.host, config.port)  # bound, not listening: nobody can connect before the model is ready
    except BaseException:
        if store is not None:
            store.close()
        raise
    try:
        plane = DataPlane(config)
        plane.load()  # with --workers: checks the model (and builds the ONNX cache) once, before the workers load it
    except BaseException:
        sock.close()
        if store is not None:
            store.close()
        raise
    return sock, plane, store


def serve_in_process(config: ServeConfig, sock: socket.socket, plane: DataPlane, store: Store | None) -> int:
    import uvicorn

    from bintally.serving.app import create_app

    server = uvicorn.Server(uvicorn_config(create_app(config, plane, audit_store=store), config))
    server.run(sockets=[sock])
    return 0 if server.started else 2


def serve_with_workers(config: ServeConfig, sock: socket.socket, plane: DataPlane, store: Store | None) -> int:
    """`config.workers` uvicorn processes on the one socket, each loading its own model and audit store."""
    from uvicorn.supervisors import Multiprocess

    if store is not None:
        store.close()  # each worker opens its own (the schema is current now)
    plane.close()  # the workers load their own; the parent only supervises
    plane.counter = plane.batcher = None
    os.environ[CONFIG_ENV] = config.to_json()
    name_supervisor()  # the workers end with this process, even when it is killed
    supervisor = Multiprocess(uvicorn_config(FACTORY, config, factory=True), sockets=[sock])
    supervisor.run()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise ConfigError("a worker process could not start (see the log above)")
    return 0
