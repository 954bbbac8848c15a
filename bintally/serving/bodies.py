"""The one way to read a request body, for every adapter: JSON, multipart forms, base64 photos, the media type.

Each refusal is a `RequestError` that says what is wrong with the body (400), or that it is over a limit (413).
Every text in a JSON body or a form (values, keys, field and file names) is checked for control characters here,
before any handler sees it: a NUL byte or a line break in a name is a 400 naming the field, whatever the database.
"""

from __future__ import annotations

import base64
import binascii
import re

from fastapi import Request
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from bintally.io import loads_json
from bintally.serving.errors import RequestError, uncounted
from bintally.text import TextError, check_text

MAX_DATA_URL_HEADER = 200
MULTILINE_FIELDS = frozenset({"comment"})  # free text that may hold line breaks and tabs; every other text is one line
TEXTUAL = (str, dict, list)  # what may hold text (numbers in a tensor's data are skipped, fast)
IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_json(body: bytes, what: str = "the body", where: str = ""):
    """`body` as strict JSON, every text in it checked (`checked_texts`, its fields named after `where`); a 400 saying
    why `what` is not: malformed, nested too deeply, a key given twice in one object (which value was meant?), or
    NaN/Infinity (not JSON, though Python writes them)."""
    try:
        doc = loads_json(body)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, an integer of more than 4,300 digits
        problem = "a number of more than 4,300 digits" if "integer string conversion" in str(e) else e
        raise RequestError(400, f"{what} is not valid JSON ({problem})") from None
    except RecursionError:
        raise RequestError(400, f"{what} is not valid JSON (nested too deeply)") from None
    return checked_texts(doc, where)


def text_field(value: str, what: str, multiline: bool = False) -> str:
    """`value`, or a 400 naming `what` when it holds a control character (bintally.text.check_text)."""
    try:
        return check_text(value, what, multiline)
    except TextError as e:
        raise RequestError(400, str(e)) from None


def child(path: str, key) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    if IDENTIFIER.match(key):
        return f"{path}.{key}" if path and not path.endswith(" ") else f"{path}{key}"
    return f"{path}[{key!r}]"


def checked_texts(doc, where: str = ""):
    """`doc` (parsed JSON) unchanged, or a 400 naming the first text in it, a value or a key, that holds a control
    character: `comment`, `lines['A\\x00']`, `bins[3].bin_id`. Only a `comment` may hold line breaks."""
    pending = [(doc, where, False)]
    while pending:
        value, path, multiline = pending.pop()
        if isinstance(value, str):
            text_field(value, path or "the body", multiline)
        elif isinstance(value, dict):
            for key in value:
                text_field(key, f"{child(path, key)} (a key)")
            pending += [(v, child(path, k), k in MULTILINE_FIELDS) for k, v in reversed(value.items()) if isinstance(v, TEXTUAL)]
        elif isinstance(value, list):
            pending += [(v, child(path, i), False) for i, v in reversed(list(enumerate(value))) if isinstance(v, TEXTUAL)]
    return doc


def json_object(body: bytes, expected: str, what: str = "the body") -> dict:
    """`body` as a JSON object; a 400 saying `expected` when it is JSON of another kind."""
    doc = parse_json(body, what)
    if not isinstance(doc, dict):
        raise RequestError(400, expected)
    return doc


async def read_form(request: Request, max_files: int, max_fields: int, too_many: str) -> FormData:
    """The multipart form; 413 (`too_many`) past python-multipart's file or field limit, 400 when it is malformed."""
    try:
        form = await request.form(max_files=max_files, max_fields=max_fields)
    except HTTPException as e:  # python-multipart's own limits and parse errors
        if "Too many" in str(e.detail):
            raise RequestError(413, f"{too_many} ({str(e.detail).rstrip('.')})") from None
        raise RequestError(400, f"malformed multipart body: {e.detail}") from None
    try:
        return checked_form(form)
    except RequestError:
        await form.close()
        raise


def checked_form(form: FormData) -> FormData:
    """`form` unchanged, or a 400 naming the first field whose name, text or file name holds a control character."""
    for name, value in form.multi_items():
        text_field(name, f"a form field name {name!r}")
        if isinstance(value, str):
            text_field(value, f"form field {name!r}", name in MULTILINE_FIELDS)
        elif value.filename:
            text_field(value.filename, f"the file name of form field {name!r}")
    return form


def decode_base64(value, where: str) -> bytes:
    """A photo's bytes from base64 text, which may be a data:[<media type>];base64,<data> URL (as a browser's FileReader makes)."""
    if not isinstance(value, str) or not value:
        got = "an empty string" if value == "" else type(value).__name__
        raise RequestError(400, f"{where}: expected a non-empty base64 string, got {got}")
    if value.startswith("data:"):
        header, comma, value = value.partition(",")
        if not comma or len(header) > MAX_DATA_URL_HEADER or not header.lower().endswith(";base64"):
            raise RequestError(400, f"{where}: a data: URL must read data:[<media type>];base64,<data>")
    try:
        return base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{where}: not valid base64") from None


async def json_fields(request: Request, allowed: set[str], required: tuple[str, ...]) -> dict:
    """The JSON body, sent as application/json (a type no page of another site can send without asking first), every
    text in it checked for control characters."""
    if not is_json(media_type(request)):
        raise uncounted(415, f"send Content-Type: application/json, not {media_type(request) or 'none'}")
    doc = json_object(await request.body(), f"expected a JSON object with {', '.join(sorted(allowed))}")
    unknown = sorted(set(doc) - allowed)
    if unknown:
        raise uncounted(400, f"unknown field(s) {', '.join(unknown)}: expected {', '.join(sorted(allowed))}")
    missing = [k for k in required if doc.get(k) is None]
    if missing:
        raise uncounted(400, f"missing field(s) {', '.join(missing)}")
    return doc


def is_json(kind: str) -> bool:
    return kind == "application/json" or (kind.startswith("application/") and kind.endswith("+json"))
