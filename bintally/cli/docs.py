"""Option tables in the docs, generated from the commands (whose options come from the settings' fields).

A table sits between `<!-- options: bintally serve -->` and `<!-- end options -->` in a Markdown file.
`python -m bintally.cli.docs` rewrites every such table; tests/test_docs.py fails while one is out of date.
"""

from __future__ import annotations

import re
import sys
import typing
from pathlib import Path
from typing import Literal

import typer

from bintally.cli import app

DOCS = Path(__file__).resolve().parents[2] / "docs"
TABLE = re.compile(r"(<!-- options: (?P<command>[a-z -]+) -->\n)(?P<table>.*?)(<!-- end options -->)", re.S)


def click_command(path: str):
    """The Click command for 'bintally serve' (or 'bintally data index')."""
    command = typer.main.get_command(app)
    for name in path.split()[1:]:
        command = command.commands[name]
    return command


def default_cell(param) -> str:
    if isinstance(param.show_default, str):
        return param.show_default
    default = param.default
    if isinstance(default, bool):
        return "on" if default else "off"
    if default is None or default == () or default == []:
        return "none"
    if isinstance(default, float):
        return f"{default:g}"
    return f"`{default}`" if isinstance(default, str) else str(default)


def option_names(param) -> str:
    return ", ".join(f"`{n}`" for n in param.opts + param.secondary_opts)


def meaning(param) -> str:
    """The help, the values a choice takes, and the environment variable that sets the option (unless the default names it)."""
    choices = typing.get_args(param.type_descriptor.annotation) if typing.get_origin(param.type_descriptor.annotation) is Literal else ()
    values = f" One of {', '.join(f'`{c}`' for c in choices)}." if choices else ""
    default = default_cell(param)
    also = f" Also `${param.envvar}`." if param.envvar and param.envvar not in default else ""
    return (param.help or "") + values + also


def option_rows(command, suffix: str = "") -> list[str]:
    return [f"| {option_names(p)}{suffix} | {default_cell(p)} | {meaning(p)} |" for p in command.params
            if p.opts and "--help" not in p.opts]


def option_table(path: str) -> str:
    """The Markdown table of a command's options, then the global ones."""
    rows = option_rows(click_command(path)) + option_rows(click_command("bintally"), " (global)")
    return "\n".join(["| option | default | meaning |", "|---|---|---|", *rows]) + "\n"


def regenerated(text: str) -> str:
    return TABLE.sub(lambda m: m.group(1) + option_table(m.group("command")) + m.group(4), text)


def stale_tables(docs: Path = DOCS) -> list[str]:
    """The docs files whose option tables differ from the commands."""
    return [str(path) for path in sorted(docs.glob("*.md")) if regenerated(path.read_text()) != path.read_text()]


def main() -> None:
    for name in stale_tables():
        path = Path(name)
        path.write_text(regenerated(path.read_text()))
        print(f"updated {path}")


if __name__ == "__main__":
    sys.exit(main())
