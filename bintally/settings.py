"""Typed settings objects: a value of the wrong type is refused with one line naming the setting."""

from __future__ import annotations

import math
import types
import typing
from dataclasses import fields

from bintally.errors import ConfigError

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
    return isinstance(value, expected) if isinstance(expected, type) else True


def describe(expected) -> str:
    options = [a for a in typing.get_args(expected) if a is not type(None)] if typing.get_origin(expected) in (typing.Union, types.UnionType) else [expected]
    names = [JSON_NAMES.get(typing.get_origin(o) or o, str(o)) for o in options]
    nullable = " or null" if typing.get_origin(expected) in (typing.Union, types.UnionType) and type(None) in typing.get_args(expected) else ""
    return " or ".join(names) + nullable


def check_types(settings, what: str = "setting") -> None:
    """Raise ConfigError for the first field whose value does not fit its annotation; ints become floats where floats are wanted."""
    hints = typing.get_type_hints(type(settings))
    for f in fields(settings):
        value, expected = getattr(settings, f.name), hints[f.name]
        if not matches(value, expected):
            raise ConfigError(f"{what} {f.name}: expected {describe(expected)}, got {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # NaN, inf: from a flag, JSON (NaN, Infinity) or Python
            raise ConfigError(f"{what} {f.name}: expected a finite number, got {value!r}")
        if expected is float and isinstance(value, int):
            setattr(settings, f.name, float(value))


def check_range(name: str, value, low=None, high=None, low_open: bool = False, high_open: bool = False) -> None:
    """One line for a number outside [low, high] (or open ends)."""
    if value is None:
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
