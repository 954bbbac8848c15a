"""`ServeConfig`: every setting of `bintally serve`, validated before any port is bound.

Each field states its help, choices and range once: the options of `bintally serve` and the option table in
docs/serving.md are generated from them.

The config travels to uvicorn worker processes as JSON in one environment variable (`CONFIG_ENV`),
because uvicorn starts workers from an import string and a factory, not from Python objects.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from bintally.errors import ConfigError
from bintally.models.artifact import MODEL_HELP
from bintally.settings import Backend, check_settings, setting
from bintally.sources import SourcePolicy
from bintally.sources.policy import DEFAULT_MAX_BYTES

CONFIG_ENV = "BINTALLY_SERVE_CONFIG"
API_KEY_ENV = "BINTALLY_API_KEY"
SAGEMAKER_PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
SAGEMAKER_MODEL_DIR = "/opt/ml/model"
DEFAULT_PORT = 8080
LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
AUDIT_AUTH = ("users", "open")
AUDIT_DB_HELP = "a SQLite file path or a PostgreSQL URL (postgresql+psycopg://user:pass@host/db)"


def default_port() -> int:
    """SAGEMAKER_BIND_TO_PORT if set (SageMaker's container contract), else 8080."""
    value = os.environ.get(SAGEMAKER_PORT_ENV, "").strip()
    if not value:
        return DEFAULT_PORT
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise ConfigError(f"{SAGEMAKER_PORT_ENV}={value!r} is not a port number (1-65535)")
    return int(value)


def allowed_origins(origins) -> tuple[str, ...]:
    """Each --allowed-origin as scheme://host:port; ConfigError for one that is not a web origin."""
    from bintally.serving.security import checked_origin

    try:
        return tuple(checked_origin(o) for o in origins)
    except ValueError as e:
        raise ConfigError(f"--allowed-origin: {e}") from None


@dataclass
class ServeConfig:
    model: str | None = setting(None, flag=("--model", "-m"), default_text=f"{SAGEMAKER_MODEL_DIR} if it exists",
                                help=f"{MODEL_HELP} None given and no {SAGEMAKER_MODEL_DIR}: error, exit 2.")
    host: str = setting("127.0.0.1", envvar="BINTALLY_HOST", default_text="$BINTALLY_HOST, else 127.0.0.1",
                        help="Address to listen on; 0.0.0.0 for every interface (containers).")
    port: int | None = setting(None, low=1, high=65535, default_text=f"${SAGEMAKER_PORT_ENV}, else {DEFAULT_PORT}",
                               help="Port to listen on.")
    backend: Backend = setting(Backend.ONNX, help="onnx (ONNX Runtime, CPU; a PyTorch run is exported once and cached) or torch.")
    device: str = setting("cpu", help="torch backend only: cpu, cuda, cuda:N (ONNX Runtime runs on the CPU).")
    threads: int | None = setting(None, low=1, default_text="the runtime's", help="Intra-op threads per forward pass.")
    workers: int = setting(1, low=1, high=256, help="Server processes on this machine, sharing the port; each loads the model.")
    max_batch_size: int = setting(16, low=1, high=4096, help="Most images in one forward pass (dynamic batching).")
    # 2 vs 5 ms: the same throughput, 4 ms less at concurrency 1
    max_wait_ms: float = setting(2.0, low=0, help="How long the first waiting image waits for others to join its batch.")
    queue_size: int = setting(256, low=1, high=10**7, help="Images admitted and not yet in a forward pass; beyond it 503 + Retry-After.")
    timeout_s: float = setting(30.0, low=0, low_open=True, flag=("--timeout",),
                               help="Seconds per request (fetching, decoding, queueing, inference); beyond it 504.")
    max_body_bytes: int = setting(DEFAULT_MAX_BYTES, low=1, high=2**40, cli=False)  # bintally serve's --max-body-mb
    max_images: int = setting(64, low=1, high=10**6, help="Most photos in one request; beyond it 413.")
    api_key: str | None = setting(None, cli=False)  # --api-key-file or $BINTALLY_API_KEY; guards all but health, /metrics and GET /
    allow_s3_buckets: tuple[str, ...] = setting((), flag=("--allow-s3-bucket",), default_text="none",
                                                help="A bucket whose s3:// URIs may be fetched (repeat for more).")
    allow_https_hosts: tuple[str, ...] = setting((), flag=("--allow-https-host",), default_text="none",
                                                 help="A host whose https:// URIs may be fetched (repeat for more).")
    allowed_origins: tuple[str, ...] = setting((), flag=("--allowed-origin",), default_text="none",
                                               help="A web origin (https://host[:port]) besides the server's own whose pages may send "
                                                    "POST requests, e.g. the public address of a proxy that rewrites Host (repeat for more).")
    file_root: str | None = setting(None, default_text="none", help="A folder whose file:// URIs may be read (nothing outside it).")
    name: str | None = setting(None, default_text="the model's name", help="The model name in answers and in /v2/models/{name}.")
    shutdown_delay_s: float = setting(0.0, low=0, flag=("--shutdown-delay",),
                                      help="Seconds to keep serving after SIGTERM while reporting not ready (for load balancers), "
                                           "then finish in-flight requests and stop.")
    log_level: str = setting("info", choices=LOG_LEVELS, help="Server log level; debug also logs every request.")
    audit_db: str | None = setting(None, flag=("--audit-db",), default_text="none",
                                   help=f"The audit store, {AUDIT_DB_HELP}: turns on the audit API (/v1/audit-runs, /v1/tasks, ...) "
                                        "and the dashboard at /audit.")
    audit_auth: str = setting("users", choices=AUDIT_AUTH,
                              help="users: every audit route and the dashboard need a user's token or dashboard login "
                                   "(`bintally audit user add`); open: no users, the audit routes need only the API key.")

    def __post_init__(self):
        self.allow_s3_buckets = tuple(self.allow_s3_buckets)
        self.allow_https_hosts = tuple(self.allow_https_hosts)  # lower-cased by the SourcePolicy
        self.allowed_origins = tuple(self.allowed_origins)

    def validate(self) -> "ServeConfig":
        """Raise ConfigError (one line) for a setting that cannot work; resolve the port, the model folder and the audit store."""
        check_settings(self)
        if self.backend == Backend.ONNX and self.device != "cpu":
            raise ConfigError(f"--device {self.device}: the onnx backend runs on the CPU; use --backend torch for a GPU")
        if self.port is None:
            self.port = default_port()
        if self.model is None:
            if not Path(SAGEMAKER_MODEL_DIR).is_dir():
                raise ConfigError(f"no model: give --model RUN_OR_EXPORT (or mount one at {SAGEMAKER_MODEL_DIR})")
            self.model = SAGEMAKER_MODEL_DIR
        if self.name is not None and (not self.name.strip() or "/" in self.name):
            raise ConfigError(f"--name {self.name!r} is not a model name (no '/', not empty)")
        self.file_root = self.source_policy().checked().file_root
        self.allowed_origins = allowed_origins(self.allowed_origins)
        if self.api_key is not None and not self.api_key.strip():
            raise ConfigError("the API key is empty")
        if self.audit_db is not None:
            if not self.audit_db.strip():
                raise ConfigError(f"--audit-db: give {AUDIT_DB_HELP}")
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
