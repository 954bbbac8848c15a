"""What every command refuses before it does anything: an option given twice with different values (`--approve
--reject`, `--qty 3 --qty 5`), options that exclude each other (`exclusive`), an empty value, text with a control
character, a number that is not finite or does not fit a 64-bit integer. One line each, exit 2.

Every command is registered with `StrictCommand` (`bintally.cli.app.command`); a settings object refuses the same
contradictions on its own (`bintally.settings.check_exclusive`), so the HTTP API does too.
"""

from __future__ import annotations

import functools
import math
import re
import typing
from pathlib import Path

from typer._click.core import ParameterSource  # typer 0.29 carries its own copy of click
from typer._click.exceptions import BadParameter, UsageError
from typer._click.globals import get_current_context
from typer.core import TyperArgument, TyperCommand

from bintally.settings import MAX_WHOLE
from bintally.text import control_character, lone_surrogate, whole_number

MULTILINE = frozenset({"comment"})  # options whose text may hold line breaks (notes); every other text is one line
GIVEN = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
DECIMAL = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*|\s*[+-]?(nan|inf|infinity)\s*", re.IGNORECASE)
EMPTY_HINT = "give a value, or leave the option out (for the current folder, give '.')"  # '' would mean the current folder


def spelling(param) -> str:
    """How a person writes the parameter: --by, TASK."""
    if isinstance(param, TyperArgument):
        return (param.metavar or param.name).upper()
    return param.opts[0]


def takes_value(param) -> bool:
    return not isinstance(param, TyperArgument) and not getattr(param, "is_flag", False) and not getattr(param, "count", False)


def is_path(param) -> bool:
    annotation = param.type_descriptor.annotation
    return any(isinstance(a, type) and issubclass(a, Path) for a in (annotation, *typing.get_args(annotation)))


def occurrences(params: list, args: list[str]) -> list[tuple[object, str, str | None, int | None]]:
    """(param, the option as written, its value or None for a switch, where that value is in `args` when it is the
    next argument) for each option on the command line, in order."""
    names = {name: p for p in params if not isinstance(p, TyperArgument) for name in p.opts + p.secondary_opts}
    found, i = [], 0
    while i < len(args) and args[i] != "--":
        written, sep, attached = args[i].partition("=") if args[i].startswith("--") else (args[i], "", "")
        param = names.get(written)
        if param is not None and (sep or not takes_value(param) or i + 1 >= len(args)):
            found.append((param, written, attached if sep else None, None))
        elif param is not None:
            found.append((param, written, args[i + 1], i + 1))
            i += 1
        i += 1
    return found


def refuse_empty(ctx, found: list, args: list[str]) -> None:
    """'' (or blanks) as an option's value or as an argument: Typer would take '' as a path for the current folder."""
    for param, written, value, at in found:
        if value is not None and not value.strip():
            hint = EMPTY_HINT if is_path(param) else "give a value" + ("" if param.required else ", or leave the option out")
            raise UsageError(f"empty argument '' {f'in {written}=' if at is None else f'after {written}'}: {written} is empty; {hint}", ctx)
    values = {at for *_, at in found}
    for i, arg in enumerate(args):
        if not arg.strip() and i not in values:
            raise UsageError(f"empty argument '' after {args[i - 1] if i else ctx.info_name}: {EMPTY_HINT}", ctx)


def refuse_non_finite(ctx, found: list) -> None:
    """nan or inf given to a number option, before its range is checked (nan is neither below nor above a bound)."""
    for param, written, value, _ in found:
        annotation = param.type_descriptor.annotation
        if value is not None and float in (annotation, *typing.get_args(annotation)):
            try:
                number = float(value)
            except ValueError:
                continue
            if not math.isfinite(number):
                raise BadParameter(f"{value} is not a finite number", ctx=ctx, param_hint=written)


def number_kind(param) -> type | None:
    """int or float when the parameter takes a number (or a list of them), else None."""
    annotation = param.type_descriptor.annotation
    written = (annotation, *typing.get_args(annotation))
    return next((kind for kind in (int, float) if kind in written), None) if takes_value(param) or isinstance(param, TyperArgument) else None


def refuse_unusual_numbers(ctx, params: list, raw: dict) -> None:
    """A number written otherwise than in ASCII digits: Python (and so Typer) reads '1_000' as 1000, '4.0' as the whole
    number 4, and full-width or Arabic-Indic digits as digits; a person typing those meant something else."""
    for param in params:
        kind, given = number_kind(param), raw.get(param.name)
        for value in given if isinstance(given, (list, tuple)) else (given,):
            if kind is None or not isinstance(value, str) or not value.strip():
                continue
            if kind is int and whole_number(value) is None:
                raise BadParameter(f"{value!r} is not a whole number (digits 0-9)", ctx=ctx, param_hint=spelling(param))
            if kind is float and not DECIMAL.fullmatch(value):
                raise BadParameter(f"{value!r} is not a number (digits 0-9, a '.', an exponent)", ctx=ctx, param_hint=spelling(param))


def refuse_repeated(ctx, found: list) -> None:
    """An option (or a switch pair such as --approve/--reject) given twice with different values; the same twice is one."""
    first: dict[str, tuple[str, str | None]] = {}
    for param, written, value, _ in found:
        if getattr(param, "multiple", False):
            continue
        earlier = first.setdefault(param.name, (written, value))
        if earlier == (written, value):
            continue
        if earlier[0] != written:
            raise UsageError(f"{earlier[0]} and {written} contradict each other: give one of them", ctx)
        raise UsageError(f"{written} given twice ({earlier[1]!r} and {value!r}): give it once", ctx)


def refuse_value(ctx, param, value) -> None:
    """Text with a control character, a number that is not finite or does not fit a 64-bit integer."""
    for item in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(item, (str, Path)):
            found = control_character(str(item), multiline=param.name in MULTILINE)
            if found is not None:
                raise BadParameter(f"contains the control character {found}; remove it", ctx=ctx, param_hint=spelling(param))
            if isinstance(item, str) and lone_surrogate(item):
                raise BadParameter(f"contains {lone_surrogate(item)}, a byte that is not UTF-8 text; remove it", ctx=ctx,
                                   param_hint=spelling(param))
            if isinstance(item, str) and not item.strip() and item:
                raise BadParameter("is blank: give a value", ctx=ctx, param_hint=spelling(param))
        elif isinstance(item, float) and not math.isfinite(item):
            raise BadParameter(f"{item} is not a finite number", ctx=ctx, param_hint=spelling(param))
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_WHOLE:
            raise BadParameter(f"{item} is too large (at most {MAX_WHOLE:,})", ctx=ctx, param_hint=spelling(param))


class StrictCommand(TyperCommand):
    """A Typer command that refuses contradictory, empty and malformed values before its callback runs."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        params = self.get_params(ctx)
        found = occurrences(params, list(args))
        refuse_empty(ctx, found, list(args))
        refuse_repeated(ctx, found)
        refuse_non_finite(ctx, found)
        refuse_unusual_numbers(ctx, params, self.make_parser(ctx).parse_args(args=list(args))[0])
        rest = super().parse_args(ctx, args)
        for param in params:
            refuse_value(ctx, param, ctx.params.get(param.name))
        return rest


def exclusive(*names: str, required: bool = False):
    """Refuse a command line that gives more than one of the parameters `names` (Python names); with `required`, also one
    that gives none. Apply it above the command's other decorators:

        @command(audit_app, "assign")
        @exclusive("to", "nobody", required=True)
        def assign_cmd(task: int, to: str | None = None, nobody: bool = False): ...
    """
    def decorate(command):
        @functools.wraps(command)
        def checked(*args, **kwargs):
            refuse_together(names, required)
            return command(*args, **kwargs)

        return checked

    return decorate


def refuse_together(names: tuple[str, ...], required: bool) -> None:
    ctx = get_current_context()
    params = {p.name: p for p in ctx.command.params}
    given = [name for name in names if ctx.get_parameter_source(name) in GIVEN]
    if len(given) > 1:
        raise UsageError(f"{spelling(params[given[0]])} and {spelling(params[given[1]])} cannot be given together: choose one", ctx)
    if required and not given:
        spelled = [spelling(params[name]) for name in names]
        raise UsageError(f"give {' or '.join(spelled)}" if len(spelled) == 2 else f"give one of {', '.join(spelled)}", ctx)
