"""`bintally serve`: the HTTP count server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from bintally.cli.app import Opt, app, command
from bintally.cli.options import settings_options
from bintally.serving.config import API_KEY_ENV, ServeConfig
from bintally.sources.policy import DEFAULT_MAX_BYTES


def read_api_key(api_key_file: Optional[Path]) -> str | None:
    """The key from --api-key-file (first line), else from BINTALLY_API_KEY, else None (no key needed)."""
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
@settings_options(ServeConfig)
def serve_cmd(
    settings: dict,
    max_body_mb: Annotated[float, Opt(min=0.001, help="Largest request body, MB (10^6 bytes); beyond it 413.")] = DEFAULT_MAX_BYTES / 1_000_000,
    api_key_file: Annotated[Optional[Path], Opt(show_default=f"${API_KEY_ENV}",
                                                help="File whose first line is the API key; with a key, requests need "
                                                     "'Authorization: Bearer KEY'.")] = None,
):
    """Serve the model over HTTP: POST /v1/count, SageMaker /ping + /invocations, Open Inference Protocol v2, /metrics, /docs
    (and, with --audit-db, the audit API and its dashboard at /audit)."""
    from bintally.serving.server import serve

    config = ServeConfig(**settings, max_body_bytes=max(1, int(max_body_mb * 1_000_000)), api_key=read_api_key(api_key_file))
    raise typer.Exit(serve(config))
