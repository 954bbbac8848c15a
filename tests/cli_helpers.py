"""Running the `bintally` command line as a user does, and checking its error lines."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass

import pytest


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def bintally(*args, cwd=None, env=None, timeout=600) -> subprocess.CompletedProcess:
    """A real `python -m bintally` process (use for signals, locks, and anything that must be a process)."""
    return subprocess.run([sys.executable, "-m", "bintally", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=None if env is None else os.environ | env, timeout=timeout)


def run_cli(*args) -> CliResult:
    """The same entry point in this process (fast: no new interpreter and torch import per case).

    The environment (progress switch, pixel limit, warnings) is restored afterwards.
    """
    from bintally.cli.main import run

    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = run([str(a) for a in args])
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return CliResult(code, out.getvalue(), err.getvalue())


def assert_one_line_error(result, *fragments: str, code: int = 2) -> str:
    """Exit `code`, no traceback, and exactly one non-empty line on stderr that contains every fragment."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert str(fragment) in lines[0], (fragment, lines[0])
    return lines[0]


@pytest.fixture
def snapshot():
    """Contents of files before a failing command, to check that nothing already done was lost or changed."""
    def take(*paths) -> dict:
        return {str(p): p.read_bytes() if p.is_file() else None for p in paths}
    return take
