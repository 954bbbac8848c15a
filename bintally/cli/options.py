"""Command-line options generated from a settings dataclass: each field's `Setting` gives the flag, help, choices and range.

    @command(app, "serve")
    @settings_options(ServeConfig)
    def serve_cmd(settings: dict, api_key_file: ... = None): ...

The command receives the options that belong to the config as one dict, `settings`, next to its own parameters.
"""

from __future__ import annotations

import enum
import functools
import inspect
import typing
from dataclasses import MISSING, Field
from typing import Annotated, Literal, Optional

import typer

from bintally.settings import Setting, described_settings, setting_types, union_members

SETTINGS_PARAMETER = "settings"


def flag_names(f: Field, annotation, spec: Setting) -> tuple[str, ...]:
    """The option's spelling: the setting's own, else --field-name (--name/--no-name for a switch)."""
    if spec.flag:
        return spec.flag
    name = f.name.replace("_", "-")
    return (f"--{name}/--no-{name}",) if base_type(annotation) is bool and not spec.words else (f"--{name}",)


def base_type(annotation):
    """`int` for `int | None`, `list[str]` for `tuple[str, ...]`."""
    annotation = next(a for a in union_members(annotation) if a is not type(None))
    if typing.get_origin(annotation) is tuple:
        return list[typing.get_args(annotation)[0]]
    return annotation


def choice(values):
    """A type whose values (names, or an enum's members) are listed in -h and checked by the parser."""
    return Literal[tuple(v.value if isinstance(v, enum.Enum) else v for v in values)]


def option_type(annotation, spec: Setting):
    if spec.choices or spec.words:
        return choice(spec.choices or spec.words)
    annotation = base_type(annotation)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return choice(annotation)
    return annotation


def field_default(f: Field, spec: Setting):
    """The default as the option spells it: an enum by its value, a switch with `words` by its word."""
    value = f.default_factory() if f.default_factory is not MISSING else f.default
    if spec.words and isinstance(value, bool):
        return spec.words[0 if value else 1]
    return value.value if isinstance(value, enum.Enum) else value


def shown_default(default, flag: str) -> str | None:
    """How -h states a default it does not pass: a switch by the name that is on (--pretrained/--random-init: pretrained)."""
    if isinstance(default, bool):
        names = flag.split("/")
        return names[0 if default else 1].lstrip("-") if len(names) == 2 else None
    return None if default in (None, "") else str(default)


def option_parameter(f: Field, annotation, spec: Setting, given_only: bool) -> inspect.Parameter:
    """One keyword parameter that Typer turns into the option; with `given_only`, None when it is not given
    (its help still shows the field's default)."""
    kind = str if spec.separator else option_type(annotation, spec)
    required = f.default is MISSING and f.default_factory is MISSING
    default = None if required else field_default(f, spec)
    if spec.separator and default is not None:
        default = spec.separator.join(map(str, default))
    flags = flag_names(f, annotation, spec)
    shown = spec.default_text or (shown_default(default, flags[0]) if given_only and not spec.default_in_help else None)
    bounds = {"min": spec.low, "max": spec.high} if kind in (int, float) else {}
    info = typer.Option(*flags, help=spec.help or None, envvar=spec.envvar, **({"show_default": shown} if shown else {}),
                        **{k: v for k, v in bounds.items() if v is not None})
    if required:
        return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=..., annotation=Annotated[kind, info])
    if given_only or default is None:
        return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[Optional[kind], info])
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[kind, info])


def split_items(text: str, f: Field, annotation, spec: Setting) -> list:
    """An option such as --image-sizes 224,288 as the list its field holds (numbers where it holds numbers)."""
    item_type = typing.get_args(base_type(annotation))[0]
    items = [item.strip() for item in text.split(spec.separator) if item.strip()]
    if item_type not in (int, float):
        return items
    try:
        return [item_type(item) for item in items]
    except ValueError:
        what = "whole numbers" if item_type is int else "numbers"
        raise typer.BadParameter(f"expected {what} separated by {spec.separator!r}, got {text!r}", param_hint=flag_names(f, annotation, spec)[0]) from None


def settings_options(settings_type, given_only: bool = False):
    """Add an option for every field of `settings_type` offered on the command line (`Setting.cli`), the fields of a nested
    settings object included (`settings` is flat: one entry per option).

    given_only: every option defaults to None and `settings` holds only the options given (for commands that layer
    the options over a preset or a file); otherwise each option shows and passes the field's default.
    """
    described = [(f, spec) for f, spec in described_settings(settings_type) if spec.cli]

    def decorate(command):
        own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items() if name != SETTINGS_PARAMETER]
        hints = setting_types(settings_type)
        generated = [option_parameter(f, hints[f.name], spec, given_only) for f, spec in described]

        @functools.wraps(command)
        def run(**values):
            settings = {f.name: values.pop(f.name) for f, _ in described}
            for f, spec in described:
                if spec.separator and settings[f.name] is not None:
                    settings[f.name] = split_items(settings[f.name], f, hints[f.name], spec)
            if given_only:
                settings = {name: value for name, value in settings.items() if value is not None}
            return command(settings, **values)

        run.__signature__ = inspect.Signature(generated + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own])
        run.__annotations__ = {}
        return run

    return decorate
