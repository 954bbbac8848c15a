"""`bintally serve`: the HTTP count server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from bintally.cli.app import Opt, app, command


def read_api_key(api_key_file: Optional[Path]) -> str | None:
    """The key from --api-key-file (first line), else from BINTALLY_API_KEY, else None (no key needed)."""
    from bintally.serving.config import API_KEY_ENV

    if api_key_file is not None:
        try:
            text = api_key_file.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise typer.BadParameter(f"cannot read {api_key_file}: {getattr(e, 'strerror', None) or e}", param_hint="--api-key-file") from None
        if not text:
            raise typer.BadParameter(f"{api_key_file} is empty", param_hint="--api-key-file")
        return text.splitlines()[0].strip()
    return os.environ.get(API_KEY_ENV, "").strip() or None


@command(app, "serve")
def serve_cmd(
    model: Annotated[Optional[str], Opt("--model", "-m", help="Run directory, its model/ folder, or an export folder. "
                                                            "Default: /opt/ml/model (SageMaker) if it exists.")] = None,
    host: Annotated[str, Opt(envvar="BINTALLY_HOST", help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[Optional[int], Opt(min=1, max=65535, help="Port. Default: $SAGEMAKER_BIND_TO_PORT, else 8080.")] = None,
    backend: Annotated[Literal["onnx", "torch"], Opt(help="ONNX Runtime (CPU; a run is exported once) or PyTorch.")] = "onnx",
    device: Annotated[str, Opt(help="torch backend: cpu, cuda or cuda:N (onnx runs on the CPU).")] = "cpu",
    workers: Annotated[int, Opt(min=1, max=256, help="Server processes on this machine (each loads the model).")] = 1,
    threads: Annotated[Optional[int], Opt(min=1, help="Intra-op threads per forward pass. Default: the runtime's.")] = None,
    max_batch_size: Annotated[int, Opt(min=1, max=4096, help="Most images in one forward pass (dynamic batching).")] = 16,
    max_wait_ms: Annotated[float, Opt(min=0, help="How long the first image of a batch waits for others.")] = 2.0,
    queue_size: Annotated[int, Opt(min=1, help="Images admitted and waiting for the model; beyond: 503 + Retry-After.")] = 256,
    timeout: Annotated[float, Opt(min=0.001, help="Seconds per request; beyond: 504.")] = 30.0,
    max_body_mb: Annotated[float, Opt(min=0.001, help="Largest request body in MB (10^6 bytes); beyond: 413.")] = 20.0,
    max_images: Annotated[int, Opt(min=1, help="Most images in one request; beyond: 413.")] = 64,
    api_key_file: Annotated[Optional[Path], Opt(help="File holding the API key clients must send as 'Authorization: Bearer KEY' "
                                                     "(or set BINTALLY_API_KEY).")] = None,
    allow_s3_bucket: Annotated[Optional[list[str]], Opt(help="Bucket whose s3:// URIs may be fetched (repeatable).")] = None,
    allow_https_host: Annotated[Optional[list[str]], Opt(help="Host whose https:// URIs may be fetched (repeatable).")] = None,
    file_root: Annotated[Optional[Path], Opt(help="Folder whose file:// URIs may be read (nothing outside it).")] = None,
    name: Annotated[Optional[str], Opt(help="Model name in responses and /v2 URLs. Default: the model's own name.")] = None,
    shutdown_delay: Annotated[float, Opt(min=0, help="After SIGTERM: report not ready at once, keep serving this many "
                                                    "seconds (for load balancers), then finish in-flight requests and stop.")] = 0.0,
    log_level: Annotated[Literal["critical", "error", "warning", "info", "debug"], Opt(help="Server log level (debug logs each request).")] = "info",
    audit_db: Annotated[Optional[str], Opt("--audit-db", help="Audit store (a SQLAlchemy URL, or a SQLite file path): serves the "
                                                          "audit API (/v1/audit-runs, /v1/tasks, ...) and the dashboard at /audit.")] = None,
):
    """Serve the model over HTTP: POST /v1/count, SageMaker /ping + /invocations, Open Inference Protocol v2, /metrics, /docs
    (and, with --audit-db, the audit API and its dashboard at /audit)."""
    from bintally.serving.config import ServeConfig, default_port
    from bintally.serving.server import serve

    if name is not None and (not name.strip() or "/" in name):
        raise typer.BadParameter(f"{name!r} is not a model name (no '/', not empty)", param_hint="--name")
    config = ServeConfig(
        model=model, host=host, port=port if port is not None else default_port(), backend=backend, device=device, workers=workers,
        threads=threads, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, queue_size=queue_size, timeout_s=timeout,
        max_body_bytes=max(1, int(max_body_mb * 1_000_000)), max_images=max_images, api_key=read_api_key(api_key_file),
        allow_s3_buckets=tuple(allow_s3_bucket or ()), allow_https_hosts=tuple(allow_https_host or ()),
        file_root=str(file_root) if file_root is not None else None, name=name, shutdown_delay_s=shutdown_delay, log_level=log_level,
        audit_db=audit_db)
    raise typer.Exit(serve(config))
