"""The entry point: every error a user can cause becomes one line and exit code 2, never a traceback."""

from __future__ import annotations

import errno
import importlib
import logging
import os
import signal
import sys
import warnings

from typer import Abort

try:  # typer 0.29 carries its own copy of click
    from typer._click.exceptions import ClickException, UsageError
except ImportError:  # pragma: no cover - older typer on top of click
    from click.exceptions import ClickException, UsageError

from bintally.cli.app import app, echo_err
from bintally.errors import ConfigError, DataError

# the module, not the Typer object that bintally.cli re-exports under the same name (its stop_reported flag lives here)
app_module = importlib.import_module("bintally.cli.app")
DEBUG_ENV = "BINTALLY_DEBUG"
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def quiet_third_party_warnings() -> None:
    """scikit-learn, PIL, matplotlib, torch and optuna warnings are for developers; --debug shows them."""
    warnings.simplefilter("ignore")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # spawned worker processes too


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or error.__class__.__name__


def describe_os_error(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or one_line(error)}"


def usage_error(error: ClickException) -> str:
    context = error.ctx if isinstance(error, UsageError) else None
    message = " ".join(error.format_message().split()).replace("Value error, ", "")
    return f"{context.command_path}: {message} (see {context.command_path} -h)" if context else message


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM while no command-specific handler (train's, tune's) is in place."""


def raise_stopped(signum, frame) -> None:
    global stopped_by
    stopped_by = signal.Signals(signum).name
    raise Stopped(stopped_by)


stopped_by: str | None = None


def run(argv: list[str]) -> int:
    """Run one command line; return the exit code (0 done, 1 partly failed, 2 bad input, 130 stopped).

    SIGTERM is handled as Ctrl-C is (systemd, Slurm and Kubernetes send it), so a stop always
    ends with exit 130 and one line, never a silent death.
    """
    global stopped_by
    stopped_by = None
    app_module.stop_reported = False
    previous = {sig: signal.signal(sig, raise_stopped) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = run_command(argv)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if code == EXIT_INTERRUPTED and stopped_by and not app_module.stop_reported:
        echo_err(f"stopped by {stopped_by}; files already written are complete (none is left half-written)")
    return code


def run_command(argv: list[str]) -> int:
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr, force=True)
    if debug:
        os.environ[DEBUG_ENV] = "1"
    else:
        quiet_third_party_warnings()
    try:
        code = app(args=argv, prog_name="bintally", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except (DataError, ConfigError) as e:
        if debug:
            raise
        echo_err(f"error: {one_line(e)}")
        return EXIT_BAD_INPUT
    except ClickException as e:  # a bad option or argument
        if e.format_message().strip():  # (empty: a command group called bare, which printed its help)
            echo_err(f"error: {usage_error(e)}")
        return e.exit_code
    except (Abort, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    except OSError as e:
        if e.errno == errno.EPIPE:  # the reader of our output went away (`| head`)
            sys.stdout = open(os.devnull, "w")
            return 1
        if debug:
            raise
        echo_err(f"error: {describe_os_error(e)}")
        return EXIT_BAD_INPUT
    except MemoryError:
        echo_err("error: out of memory; try a smaller --batch-size or fewer --workers")
        return 1
    except Exception as e:
        if debug:
            raise
        echo_err(f"error: unexpected {e.__class__.__name__}: {one_line(e)} (a bug in bintally: "
                 f"rerun with --debug for the traceback and report it)")
        return 1


def main() -> None:
    sys.exit(run(sys.argv[1:]))
