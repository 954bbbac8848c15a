"""`bintally serve`: the HTTP count server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from bintally.cli.app import Opt, app, command
from bintally.cli.options import settings_options
from bintally.errors import DataError
from bintally.io import read_regular
from bintally.serving.config import API_KEY_ENV, ServeConfig
from bintally.sources.policy import DEFAULT_MAX_BYTES

MAX_KEY_FILE_BYTES = 64_000  # a key is one line; a bigger file is not a key file


def read_api_key(api_key_file: Optional[Path]) -> str | None:
    """The key from --api-key-file (first line), else from BINTALLY_API_KEY, else None (no key needed)."""
    if api_key_file is not None:
        try:
            text = read_regular(api_key_file, MAX_KEY_FILE_BYTES, "API key file").decode("utf-8").strip()
        except DataError as e:
            raise typer.BadParameter(e.problem, param_hint="--api-key-file") from None
        except UnicodeDecodeError:
            raise typer.BadParameter(f"{api_key_file} is not UTF-8 text", param_hint="--api-key-file") from None
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
