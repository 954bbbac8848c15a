"""Text a user gives bintally (bin ids, SKUs, names, comments, numbers in files): refused, never quietly changed.

`check_text` is the one check for control characters, used at every edge (CLI options, files read, HTTP bodies),
so a NUL byte or a newline is one clear refusal whatever the database behind, and a bin id can never collide
with another after a normalisation. `whole_number` reads a count the way a person writes it: ASCII digits only.
"""

from __future__ import annotations

import re

# C0 controls but tab/newline/CR (allowed only in multi-line text), DEL, C1 controls, Unicode line/paragraph separators,
# and the bidirectional embeddings, overrides and isolates, which make a text display as another ("Trojan Source")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# in one-line text also the invisible characters that make two ids or names look the same: zero-width space, word
# joiner and invisible operators, the byte order mark, the left-to-right/right-to-left/Arabic letter marks
_LINE_BREAKS = re.compile("[\t\n\r\u061c\u200b\u200e\u200f\u2060-\u2064\ufeff]")
# half a UTF-16 surrogate pair: what JSON's "\\ud800", or a byte that is not UTF-8 in argv, decodes to; no database
# or UTF-8 writer takes it (a file name may hold one: paths are not checked for it)
_SURROGATE = re.compile("[\ud800-\udfff]")
_WHOLE = re.compile(r"[+-]?[0-9]+")


class TextError(ValueError):
    """A text field that cannot be taken as it is; str() is one line (what, and the problem)."""


def control_character(value: str, multiline: bool = False) -> str | None:
    """The first character of `value` a text field must not hold, as U+XXXX, or None."""
    match = _CONTROL.search(value) or (None if multiline else _LINE_BREAKS.search(value))
    return None if match is None else f"U+{ord(match.group()):04X}"


def lone_surrogate(value: str) -> str | None:
    """The first half of a UTF-16 surrogate pair in `value` (not text: nothing can encode it), as U+XXXX, or None."""
    match = _SURROGATE.search(value)
    return None if match is None else f"U+{ord(match.group()):04X}"


def check_text(value: str, what: str, multiline: bool = False) -> str:
    """`value` unchanged, or TextError naming `what` and the control character (or lone surrogate) it holds.

    `multiline` (comments, notes) allows tab, newline and carriage return; identifiers and names never do.
    """
    found = control_character(value, multiline)
    if found is not None:
        allowed = "" if multiline else " (identifiers and names are one line)"
        raise TextError(f"{what}: contains the control character {found}{allowed}; remove it")
    found = lone_surrogate(value)
    if found is not None:
        raise TextError(f"{what}: contains {found}, half of a UTF-16 surrogate pair, which is not text; remove it")
    return value


def identifier_problem(value: str) -> str | None:
    """Why `value` cannot be an identifier (a bin id, a SKU) beside `control_character`: not written in Unicode's
    composed form (NFC), so that 'é' as one character and as 'e' with a combining accent are never two bins that look
    alike. None when it can."""
    import unicodedata

    if not unicodedata.is_normalized("NFC", value):
        return "is not in Unicode's composed form NFC (an accent written as a separate combining mark); write it composed"
    return None


def whole_number(text: str) -> int | None:
    """`text` as an int when it is written in ASCII digits (an optional sign, spaces around); else None.

    Python's int() also takes '1_000' and full-width or Arabic-Indic digits: a record never means those.
    """
    stripped = text.strip()
    return int(stripped) if _WHOLE.fullmatch(stripped) else None
