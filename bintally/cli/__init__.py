"""The `bintally` command line: a thin layer over the Python API."""

from bintally.cli import audit, data, evaluate, export, people, serve, train  # noqa: F401  (they register their commands)
from bintally.cli.app import app
from bintally.cli.main import main

__all__ = ["app", "main"]
