"""Typed settings objects: each field states its help, choices and range once (`setting`), and a value of the
wrong type, off its choices or out of its range is refused with one line naming the setting (`check_settings`).

The command-line options and the option tables in the docs are generated from the same fields.
"""

from __future__ import annotations

import enum
import math
import numbers
import types
import typing
from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass

from bintally.errors import ConfigError

SETTING = "bintally.setting"  # the metadata key a field's `Setting` is stored under
MAX_WHOLE = 2**63 - 1  # the largest whole number any setting takes: SQLite and PostgreSQL store 64-bit integers
EXCLUSIVE = "EXCLUSIVE"  # a settings class's groups of fields of which at most one may be given, e.g. (("budget", "threshold"),)


class Backend(enum.StrEnum):
    """The runtime a model runs on: PyTorch, or ONNX Runtime (a PyTorch model is exported first)."""

    TORCH = "torch"
    ONNX = "onnx"


@dataclass(frozen=True)
class Setting:
    """What a settings field means to a person: its help, allowed values and range."""

    help: str = ""
    choices: tuple = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    flag: tuple[str, ...] = ()  # the command-line spelling when it is not --field-name, e.g. ("--pretrained/--random-init",)
    envvar: str | None = None
    separator: str | None = None  # a list given as one option value, items split on this (e.g. --image-sizes 224,288)
    cli: bool = True  # False: not a command-line option (the command fills it in from options of its own)
    default_text: str | None = None  # how help and docs state the default when the value alone does not say it
    default_in_help: bool = False  # the help states the default (the field's value is only where an unset setting starts)
    words: tuple[str, str] = ()  # how the command line and settings files spell a switch: (the word for true, the word for false)


def setting(default=MISSING, *, default_factory=MISSING, **spec) -> typing.Any:
    """A dataclass field with its `Setting`: `lr: float = setting(1e-3, help="...", low=0, low_open=True)`."""
    return field(default=default, default_factory=default_factory, metadata={SETTING: Setting(**spec)})


def spec_of(f: Field) -> Setting:
    return f.metadata.get(SETTING) or Setting()


def nested_type(annotation) -> type | None:
    """The settings dataclass a field holds whole (`model: ModelConfig`), if it holds one."""
    return annotation if isinstance(annotation, type) and is_dataclass(annotation) else None


def described_settings(settings_type) -> list[tuple[Field, Setting]]:
    """Each setting with its `Setting`; a field holding settings of their own (a nested dataclass) stands for them, in its place."""
    hints = typing.get_type_hints(settings_type)
    described = []
    for f in fields(settings_type):
        inner = nested_type(hints[f.name])
        described += described_settings(inner) if inner else [(f, spec_of(f))]
    return described


def setting_types(settings_type) -> dict[str, typing.Any]:
    """The annotation of each setting `described_settings` lists, by name."""
    found = {}
    for name, hint in typing.get_type_hints(settings_type).items():
        inner = nested_type(hint)
        found |= setting_types(inner) if inner else {name: hint}
    return found


def check_settings(settings, what: str = "setting") -> None:
    """Types (`check_types`), then each field's choices and range from its `Setting` (for a list: each item's), then
    the settings of each nested settings object the same way; None is always allowed past these."""
    check_types(settings, what)
    check_exclusive(settings)
    hints = typing.get_type_hints(type(settings))
    for f in fields(settings):
        value, spec = getattr(settings, f.name), spec_of(f)
        if nested_type(hints[f.name]):
            check_settings(value, what)
            continue
        for item in value if isinstance(value, (list, tuple)) else () if value is None else (value,):
            if spec.choices:
                check_choice(f.name, item, spec.choices)
            if spec.low is not None or spec.high is not None:
                check_range(f.name, item, spec.low, spec.high, spec.low_open, spec.high_open)
            if isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_WHOLE:
                raise ConfigError(f"{what} {f.name}: {item} is too large (at most {MAX_WHOLE:,})")


def option_name(f: Field) -> str:
    """The setting's command-line spelling (--budget), as bintally.cli.options spells it."""
    spec = spec_of(f)
    return spec.flag[0].split("/")[0] if spec.flag else f"--{f.name.replace('_', '-')}"


def is_given(f: Field, value) -> bool:
    """Was the setting given, i.e. does it differ from its default (None, off, an empty list)?"""
    default = f.default_factory() if f.default_factory is not MISSING else None if f.default is MISSING else f.default
    return value != default and value not in (None, (), [])


def check_exclusive(settings) -> None:
    """One line for two settings of a group in the class's EXCLUSIVE that were both given (`--budget` with `--threshold`):
    neither is quietly preferred."""
    by_name = {f.name: f for f in fields(settings)}
    for group in getattr(type(settings), EXCLUSIVE, ()):
        given = [by_name[name] for name in group if is_given(by_name[name], getattr(settings, name))]
        if len(given) > 1:
            a, b = given[:2]
            raise ConfigError(f"{a.name} and {b.name} cannot be given together ({option_name(a)}, {option_name(b)}): choose one")


def check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}: use one of {', '.join(map(str, allowed))}")

JSON_NAMES = {int: "a whole number", float: "a number", bool: "true or false", str: "text", dict: "an object", list: "a list"}


def matches(value, expected) -> bool:
    """Does `value` fit the annotation `expected` (int, float, bool, str, X | None, list[X], tuple[X, ...], dict)?"""
    origin = typing.get_origin(expected)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, option) for option in typing.get_args(expected))
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = [a for a in typing.get_args(expected) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(any(matches(v, a) for a in args) for v in value)
    if origin is dict or expected is dict:
        return isinstance(value, dict)
    if isinstance(expected, type) and issubclass(expected, enum.Enum):
        return value in {member.value for member in expected}
    return isinstance(value, expected) if isinstance(expected, type) else True


def union_members(annotation) -> tuple:
    """The types an annotation allows: (int, NoneType) for `int | None`, (int,) for `int`."""
    return typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) else (annotation,)


def describe(expected) -> str:
    members = union_members(expected)
    options = [a for a in members if a is not type(None)] if len(members) > 1 else list(members)
    names = [" or ".join(repr(m.value) for m in o) if isinstance(o, type) and issubclass(o, enum.Enum) else JSON_NAMES.get(typing.get_origin(o) or o, str(o))
             for o in options]
    nullable = " or null" if len(members) > 1 and type(None) in members else ""
    return " or ".join(names) + nullable


def check_types(settings, what: str = "setting") -> None:
    """Raise ConfigError for the first field whose value does not fit its annotation; ints become floats where floats are wanted,
    names become members where an enum is wanted."""
    hints = typing.get_type_hints(type(settings))
    for f in fields(settings):
        value, expected = getattr(settings, f.name), hints[f.name]
        if not matches(value, expected):
            raise ConfigError(f"{what} {f.name}: expected {describe(expected)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # NaN, inf: from a flag, JSON (NaN, Infinity) or Python
            raise ConfigError(f"{what} {f.name}: expected a finite number, got {value!r}")
        if expected is float and isinstance(value, int):
            setattr(settings, f.name, float(value))
        enum_type = enum_of(expected)
        if enum_type is not None and value is not None:
            setattr(settings, f.name, enum_type(value))


def enum_of(expected) -> type[enum.Enum] | None:
    """The enum in an annotation such as `Backend` or `Backend | None`."""
    return next((o for o in union_members(expected) if isinstance(o, type) and issubclass(o, enum.Enum)), None)


def check_range(name: str, value, low=None, high=None, low_open: bool = False, high_open: bool = False, whole: bool = False) -> None:
    """One line for a number outside [low, high] (or open ends). `whole`: a whole number in the closed range, refused
    in words ("seed must be a whole number from 0 to 9, got -1"), as anything that is not a whole number is."""
    if value is None:
        return
    if whole:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not (low is None or value >= low) or not (high is None or value <= high):
            bounds = " from {} to {}" if low is not None and high is not None else " >= {}" if low is not None else " <= {1}" if high is not None else ""
            raise ConfigError(f"{name} must be a whole number{bounds.format(low, high)}, got {value!r}")
        return
    if isinstance(value, float) and math.isnan(value):  # NaN compares False with every bound
        raise ConfigError(f"{name} must be a number, got nan")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        span = f"{left}{'-inf' if low is None else low}, {'inf' if high is None else high}{right}"
        raise ConfigError(f"{name} must be in {span}, got {value!r}")
