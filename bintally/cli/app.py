"""The Typer applications and what every command shares: options, messages, output checks."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from bintally.cli.strict import StrictCommand
from bintally.data.images import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, set_max_pixels
from bintally.progress import PROGRESS_HELP, set_progress

HELP = {"help_option_names": ["-h", "--help"]}

app = typer.Typer(help="Count items in warehouse bin photos.", no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings=HELP, add_completion=False)
data_app = typer.Typer(help="Fetch, index, split, check and report on bin photos.", no_args_is_help=True, context_settings=HELP)
app.add_typer(data_app, name="data")

Opt = typer.Option


def command(typer_app: typer.Typer, name: str):
    """Register a command that takes -h as well as --help and refuses contradictory, empty or malformed values
    (`StrictCommand`)."""
    return typer_app.command(name, cls=StrictCommand, context_settings=HELP)


def echo_err(message: str) -> None:
    typer.echo(message, err=True)


stop_reported = False  # a command said how it stopped; the entry point adds nothing


def echo_stopped(message: str) -> None:
    global stop_reported
    stop_reported = True
    echo_err(message)


def show_progress(enabled: bool) -> bool:
    """Apply a command's --progress/--no-progress to every bar of the process."""
    if not enabled:
        set_progress(False)
    return enabled


ProgressOpt = Annotated[bool, Opt("--progress/--no-progress", help=PROGRESS_HELP)]


@app.callback()
def global_options(
    debug: Annotated[bool, Opt("--debug", help="Show a traceback with every error (or set BINTALLY_DEBUG=1).")] = False,
    max_pixels: Annotated[Optional[int], Opt("--max-pixels", min=1, envvar=MAX_PIXELS_ENV, show_default=f"{DEFAULT_MAX_PIXELS:,}",
                                             help="Refuse images with more pixels than this (decompression bombs).")] = None,
):
    """Count items in warehouse bin photos."""
    if max_pixels is not None:
        set_max_pixels(max_pixels)


def default_manifest(manifest: Optional[Path]) -> Path:
    """With no manifest given, work on the bundled sample (indexed and split once, then cached), and say so."""
    from bintally.data.sample import data_or_sample

    path = Path(data_or_sample(manifest))
    if manifest is None:
        echo_err(f"no manifest given: using the bundled sample ({path})")
    return path
