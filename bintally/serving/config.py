"""`ServeConfig`: every setting of `bintally serve`, validated before any port is bound.

The config travels to uvicorn worker processes as JSON in one environment variable (`CONFIG_ENV`),
because uvicorn starts workers from an import string and a factory, not from Python objects.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from bintally.errors import ConfigError
from bintally.sources import SourcePolicy

CONFIG_ENV = "BINTALLY_SERVE_CONFIG"
API_KEY_ENV = "BINTALLY_API_KEY"
SAGEMAKER_PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
SAGEMAKER_MODEL_DIR = "/opt/ml/model"
DEFAULT_PORT = 8080
BACKENDS = ("onnx", "torch")


def default_port() -> int:
    """SAGEMAKER_BIND_TO_PORT if set (SageMaker's container contract), else 8080."""
    value = os.environ.get(SAGEMAKER_PORT_ENV, "").strip()
    if not value:
        return DEFAULT_PORT
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"{SAGEMAKER_PORT_ENV}={value!r} is not a port number (1-65535)")
    return int(value)


@dataclass
class ServeConfig:
    model: str | None = None  # run dir / model dir / export dir; None -> /opt/ml/model (SageMaker) if it exists
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT  # env SAGEMAKER_BIND_TO_PORT overrides the default (see default_port)
    backend: str = "onnx"  # onnx | torch
    device: str = "cpu"  # torch backend: cpu, cuda, cuda:1, ... (ONNX Runtime runs on the CPU)
    workers: int = 1
    threads: int | None = None  # intra-op threads per inference
    max_batch_size: int = 16  # micro-batching: images per forward pass
    max_wait_ms: float = 2.0  # how long the first image of a batch waits for company (2 vs 5 ms: same throughput, 4 ms less at concurrency 1)
    queue_size: int = 256  # images waiting; beyond -> 503 + Retry-After
    timeout_s: float = 30.0  # per request -> 504
    max_body_bytes: int = 20_000_000  # -> 413
    max_images: int = 64  # per request -> 413
    api_key: str | None = None  # from env BINTALLY_API_KEY or --api-key-file; guards all but health, /metrics and GET /
    allow_s3_buckets: tuple[str, ...] = ()
    allow_https_hosts: tuple[str, ...] = ()
    file_root: str | None = None  # file:// URIs only under this root (no .. or symlink escapes)
    name: str | None = None  # model name in URLs; default: the artifact's name
    shutdown_delay_s: float = 0.0  # after SIGTERM: not ready at once, keep serving this long, then stop (load balancers)
    log_level: str = "info"
    audit_db: str | None = None  # the audit store (SQLAlchemy URL or SQLite path): turns on /v1/audit-runs, /v1/tasks, /audit

    def __post_init__(self):
        self.allow_s3_buckets = tuple(self.allow_s3_buckets)
        self.allow_https_hosts = tuple(self.allow_https_hosts)  # lower-cased by the SourcePolicy

    def validate(self) -> "ServeConfig":
        """Raise ConfigError (one line) for a setting that cannot work; resolve the model folder."""
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}: use one of {', '.join(BACKENDS)}")
        if self.backend == "onnx" and self.device != "cpu":
            raise ConfigError(f"--device {self.device}: the onnx backend runs on the CPU; use --backend torch for a GPU")
        checks = [("port", self.port, 1, 65535), ("workers", self.workers, 1, 256), ("max_batch_size", self.max_batch_size, 1, 4096),
                  ("queue_size", self.queue_size, 1, 10**7), ("max_body_bytes", self.max_body_bytes, 1, 2**40),
                  ("max_images", self.max_images, 1, 10**6)]
        for name, value, low, high in checks:
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ConfigError(f"{name} must be a whole number from {low} to {high}, got {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ConfigError(f"threads must be a whole number >= 1, got {self.threads!r}")
        if not self.max_wait_ms >= 0:
            raise ConfigError(f"max_wait_ms must be >= 0, got {self.max_wait_ms!r}")
        if not self.shutdown_delay_s >= 0:
            raise ConfigError(f"shutdown delay must be >= 0 seconds, got {self.shutdown_delay_s!r}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout must be > 0 seconds, got {self.timeout_s!r}")
        if self.model is None:
            if not Path(SAGEMAKER_MODEL_DIR).is_dir():
                raise ConfigError(f"no model: give --model RUN_OR_EXPORT (or mount one at {SAGEMAKER_MODEL_DIR})")
            self.model = SAGEMAKER_MODEL_DIR
        self.file_root = self.source_policy().checked().file_root
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("the API key is empty")
        if self.audit_db is not None:
            if not isinstance(self.audit_db, str) or not self.audit_db.strip():
                raise ConfigError("--audit-db: give a SQLAlchemy URL or the path of a SQLite file")
            from bintally.audit.store import database_url

            self.audit_db = database_url(self.audit_db.strip())  # a relative SQLite path: absolute, the same for every worker
        return self

    def source_policy(self) -> SourcePolicy:
        """Where photos named by URI may come from, and their size limit (the body limit)."""
        return SourcePolicy(self.allow_s3_buckets, self.allow_https_hosts, self.file_root, self.max_body_bytes)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ServeConfig":
        values = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})

    @classmethod
    def from_env(cls) -> "ServeConfig":
        text = os.environ.get(CONFIG_ENV)
        if not text:
            raise ConfigError(f"{CONFIG_ENV} is not set: start the server with `bintally serve`")
        return cls.from_json(text)

    def public(self) -> dict:
        """The settings without the API key (for logs and /v1/models)."""
        values = asdict(self)
        values["api_key"] = "***" if self.api_key else None
        if self.audit_db:
            from bintally.audit.store import shown

            values["audit_db"] = shown(self.audit_db)
        return values
