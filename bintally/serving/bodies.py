"""The one way to read a request body, for every adapter: JSON, multipart forms, base64 photos, the media type.

Each refusal is a `RequestError` that says what is wrong with the body (400), or that it is over a limit (413).
"""

from __future__ import annotations

import base64
import binascii
import json

from fastapi import Request
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from bintally.serving.errors import RequestError

MAX_DATA_URL_HEADER = 200


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def parse_json(body: bytes, what: str = "the body"):
    """`body` as JSON; a 400 saying why `what` is not."""
    try:
        return json.loads(body)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise RequestError(400, f"{what} is not valid JSON ({e})") from None
    except RecursionError:
        raise RequestError(400, f"{what} is not valid JSON (nested too deeply)") from None


def json_object(body: bytes, expected: str, what: str = "the body") -> dict:
    """`body` as a JSON object; a 400 saying `expected` when it is JSON of another kind."""
    doc = parse_json(body, what)
    if not isinstance(doc, dict):
        raise RequestError(400, expected)
    return doc


async def read_form(request: Request, max_files: int, max_fields: int, too_many: str) -> FormData:
    """The multipart form; 413 (`too_many`) past python-multipart's file or field limit, 400 when it is malformed."""
    try:
        return await request.form(max_files=max_files, max_fields=max_fields)
    except HTTPException as e:  # python-multipart's own limits and parse errors
        if "Too many" in str(e.detail):
            raise RequestError(413, f"{too_many} ({str(e.detail).rstrip('.')})") from None
        raise RequestError(400, f"malformed multipart body: {e.detail}") from None


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
