"""The bintally REST API (POST /v1/count, GET /v1/model) and the SageMaker contract (GET /ping, POST /invocations).

One request format for both inference endpoints:
- a raw photo: Content-Type image/jpeg, image/png, image/webp, image/bmp (or application/x-image);
- multipart/form-data with one or more files (any field names);
- JSON {"image_b64": "..."}, {"uri": "..."} or {"images": [{"image_b64" | "uri": ...}, ...]}.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response
from starlette.datastructures import UploadFile

from bintally.serving.bodies import decode_base64, json_object, media_type, read_form
from bintally.serving.config import ServeConfig
from bintally.serving.dataplane import DataPlane
from bintally.serving.errors import RequestError, error_responses, too_many_images

IMAGE_TYPES = ("image/jpeg", "image/jpg", "image/png", "image/webp", "image/bmp", "application/x-image")
ACCEPTED = "image/jpeg, image/png, image/webp, image/bmp, application/x-image, multipart/form-data or application/json"

_b64 = {"type": "string", "format": "byte", "description": "the photo's bytes, base64 (or a data:<media type>;base64,<data> URL)"}
_uri = {"type": "string", "description": "s3://bucket/key, https://host/path or file:///path, if allowlisted",
        "examples": ["s3://my-bucket/bin-images/00100.jpg"]}
_json_input = {"type": "object", "properties": {"image_b64": _b64, "uri": _uri}, "additionalProperties": False}
REQUEST_BODY = {
    "required": True,
    "content": {
        "image/jpeg": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
        "application/json": {"schema": {"oneOf": [
            {"type": "object", "properties": {"image_b64": _b64}, "required": ["image_b64"], "additionalProperties": False},
            {"type": "object", "properties": {"uri": _uri}, "required": ["uri"], "additionalProperties": False},
            {"type": "object", "properties": {"images": {"type": "array", "minItems": 1, "items": _json_input}},
             "required": ["images"], "additionalProperties": False}]}},
    },
}
RESULT = {"type": "object", "properties": {
    "image": {"type": "string", "description": "the file name or URI, when the request named the photo"},
    "count": {"type": "integer"}, "label": {"type": "string"}, "confidence": {"type": "number"},
    "expected_count": {"type": "number"}, "probabilities": {"type": "object", "additionalProperties": {"type": "number"}}}}
COUNT_RESPONSE = {"type": "object", "properties": {
    "model": {"type": "string"}, "version": {"type": "string"}, "request_id": {"type": "string"},
    "results": {"type": "array", "items": RESULT}}}
ERRORS = error_responses({
    400: "undecodable image or invalid request", 401: "missing or wrong API key", 403: "URI not allowlisted",
    413: "body, image or image count over the limit", 415: "unsupported Content-Type",
    503: "overloaded (Retry-After) or not ready", 504: "timed out"})
COUNT_DOC = {"requestBody": REQUEST_BODY, "responses": {
    "200": {"description": "one result per photo, in order", "content": {"application/json": {"schema": COUNT_RESPONSE}}}, **ERRORS}}


Inputs = tuple[list[bytes], list[str | None]]  # the photos' bytes, and each one's name when the request gives one
JSON_EXPECTED = 'expected a JSON object: {"image_b64": ...}, {"uri": ...} or {"images": [...]}'


async def read_inputs(request: Request, plane: DataPlane) -> Inputs:
    """The photos of a request, in order; URIs fetched."""
    kind = media_type(request)
    if kind in IMAGE_TYPES:
        return await raw_image_input(request)
    if kind == "multipart/form-data":
        return await form_inputs(request, plane.config.max_images)
    if kind == "application/json":
        return await json_inputs(json_object(await request.body(), JSON_EXPECTED), plane)
    if not kind:
        raise RequestError(415, f"no Content-Type: send {ACCEPTED}")
    raise RequestError(415, f"unsupported Content-Type {kind!r}: send {ACCEPTED}")


async def raw_image_input(request: Request) -> Inputs:
    body = await request.body()
    if not body:
        raise RequestError(400, "empty request body: send the photo's bytes")
    return [body], [None]


async def form_inputs(request: Request, limit: int) -> Inputs:
    """Every part of the form is a photo (any field names), named by its file name."""
    form = await read_form(request, limit + 1, limit + 16, f"too many images in one request: the limit is {limit}")
    files = []
    for field, value in form.multi_items():
        if not isinstance(value, UploadFile):
            raise RequestError(400, f"form field {field!r} is not a file: send photos as file parts")
        files.append(value)
    if not files:
        raise RequestError(400, "the form holds no file: send one or more photos as file parts")
    if len(files) > limit:
        raise too_many_images(len(files), limit)
    data = [await f.read() for f in files]
    await form.close()
    return data, [f.filename or None for f in files]


def json_items(doc: dict, limit: int) -> list:
    """The {"image_b64" | "uri": ...} items of a JSON request: the object itself, or its "images" list."""
    keys = set(doc) & {"image_b64", "uri", "images"}
    if len(keys) != 1 or set(doc) - keys:
        raise RequestError(400, 'expected exactly one of "image_b64", "uri" or "images" (and nothing else); '
                                f"got {sorted(doc) or 'an empty object'}")
    items = doc["images"] if "images" in doc else [doc]
    if not isinstance(items, list) or not items:
        raise RequestError(400, '"images" must be a non-empty list of {"image_b64": ...} or {"uri": ...}')
    if len(items) > limit:
        raise too_many_images(len(items), limit)
    return items


async def json_inputs(doc: dict, plane: DataPlane) -> Inputs:
    """Base64 photos decoded, URIs fetched concurrently; each URI names its photo."""
    batch = "images" in doc
    items = json_items(doc, plane.config.max_images)
    uris, data = {}, []
    for i, item in enumerate(items):
        where = f"images[{i}]" if batch else "the request"
        if not isinstance(item, dict) or len(item) != 1 or next(iter(item)) not in ("image_b64", "uri"):
            raise RequestError(400, f'{where}: expected {{"image_b64": ...}} or {{"uri": ...}}')
        if "uri" in item:
            if not isinstance(item["uri"], str) or not item["uri"]:
                raise RequestError(400, f"{where}: uri must be a non-empty string")
            uris[i] = item["uri"]
            data.append(b"")
        else:
            data.append(decode_base64(item["image_b64"], f"images[{i}].image_b64" if batch else "image_b64"))
    fetched = await asyncio.gather(*(plane.fetch_uri(uri) for uri in uris.values()))
    for i, blob in zip(uris, fetched):
        data[i] = blob
    return data, [uris.get(i) for i in range(len(items))]


async def count_request(request: Request, plane: DataPlane) -> dict:
    async def work():
        plane.require_loaded()
        images, names = await read_inputs(request, plane)
        labels = [name or (f"image {i + 1}" if len(images) > 1 else "the image") for i, name in enumerate(names)]
        prediction = await plane.predict_images(images, labels)
        return [({"image": name} if name else {}) | row for name, row in zip(names, prediction.rows())]

    results = await plane.with_timeout(work())
    return {"model": plane.name, "version": plane.version, "request_id": request.state.request_id, "results": results}


def rest_router(plane: DataPlane, config: ServeConfig) -> APIRouter:
    router = APIRouter()

    @router.post("/v1/count", tags=["bintally"], summary="Count the items in one or more bin photos", openapi_extra=COUNT_DOC)
    async def count(request: Request) -> dict:
        """Send a photo (image/jpeg or image/png bytes), several as multipart/form-data files, or JSON
        (`{"image_b64": ...}`, `{"uri": ...}`, `{"images": [...]}`); get one result per photo, in order."""
        return await count_request(request, plane)

    @router.get("/v1/model", tags=["bintally"], summary="The model being served")
    async def model() -> dict:
        return plane.metadata()

    @router.get("/ping", tags=["SageMaker"], summary="SageMaker health check: 200 once the model is loaded and warm",
                responses={"503": {"description": "not ready (loading or shutting down)"}})
    async def ping() -> Response:
        return Response(status_code=200 if plane.ready else 503)

    @router.post("/invocations", tags=["SageMaker"], summary="SageMaker inference: the same input and answer as /v1/count",
                 openapi_extra=COUNT_DOC)
    async def invocations(request: Request) -> dict:
        return await count_request(request, plane)

    return router
