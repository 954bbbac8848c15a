"""The Open Inference Protocol v2 (KServe v2 / Triton HTTP): a thin adapter over the data plane.

Endpoints: GET /v2 (server metadata), GET /v2/health/live, GET /v2/health/ready, GET /v2/models/{name}[/versions/{v}]
(model metadata), GET .../ready and POST .../infer. Off-the-shelf clients (tritonclient.http, KServe's
InferenceRESTClient) work unchanged.

Inputs (one per request):
- "image", BYTES, shape [N]: encoded photos (JPEG, PNG, ...). In JSON `data` each element is a base64 string; with the
  binary tensor data extension each element is a 4-byte little-endian length followed by the photo's bytes.
- "images", FP32, shape [N, 3, S, S]: photos already pre-processed (resized and normalised) for the model.

Outputs: count (INT64 [N]), probabilities (FP32 [N, C], columns in the order of the model's classes), label (BYTES [N]),
confidence (FP32 [N]), expected_count (FP32 [N]). All of them unless the request names some in `outputs`.

Binary tensor data extension: the header `Inference-Header-Content-Length: L` says the first L bytes of the body are
the JSON request; the rest is raw tensor data, taken in input order, `parameters.binary_data_size` bytes per input.
An output is returned as raw data when its parameters say `binary_data: true`, or when the request parameters say
`binary_data_output: true` (what tritonclient sends when no outputs are named); the reply then carries the same header.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

import bintally
from bintally.inference.prediction import OUTPUTS, Prediction
from bintally.inference.signature import ARRAY_INPUT, IMAGE_INPUT
from bintally.serving.bodies import decode_base64, json_object
from bintally.serving.config import ServeConfig
from bintally.serving.dataplane import DataPlane
from bintally.serving.errors import RequestError, error_responses, too_many_images

HEADER_LENGTH = "Inference-Header-Content-Length"
SERVER_NAME = "bintally"
EXTENSIONS = ["binary_tensor_data"]
PLATFORMS = {"onnx": "onnxruntime_onnx", "torch": "pytorch_libtorch"}
NP_TYPES = {"INT64": "<i8", "FP32": "<f4"}


def bad(message: str) -> RequestError:
    return RequestError(400, message)


# ---------------------------------------------------------------------------------------------------- wire format


def serialize_bytes(elements: list[bytes]) -> bytes:
    """A BYTES tensor's raw form: per element, its length as a 4-byte little-endian integer, then its bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def deserialize_bytes(raw: bytes | memoryview, what: str = "BYTES tensor", limit: int | None = None) -> list[bytes]:
    """The elements of a BYTES tensor's raw form; RequestError(400) when the lengths do not add up, 413 past `limit` elements."""
    raw = memoryview(raw)
    elements, offset = [], 0
    while offset < len(raw):
        if limit is not None and len(elements) >= limit:
            raise RequestError(413, f"{what}: more than {limit} photos in one request; the limit is {limit}")
        if offset + 4 > len(raw):
            raise bad(f"{what}: {len(raw) - offset} stray byte(s) at offset {offset} where a 4-byte element length was expected")
        (length,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + length > len(raw):
            raise bad(f"{what}: element {len(elements)} claims {length} bytes but only {len(raw) - offset} remain")
        elements.append(bytes(raw[offset:offset + length]))
        offset += length
    return elements


def decompress(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The body without its Content-Encoding (gzip or deflate, as tritonclient can send), at most `limit` bytes."""
    encoding = (encoding or "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise RequestError(415, f"unsupported Content-Encoding {encoding!r}: use gzip, deflate or none")
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as e:
        raise bad(f"the body is not valid {encoding} data ({e})") from None
    if len(out) > limit:
        raise RequestError(413, f"the decompressed body is over the limit of {limit} bytes")
    return out


def split_body(body: bytes, header_length: str | None) -> tuple[dict, memoryview]:
    """(the JSON request, the binary data after it)."""
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        value = header_length.strip()
        if not (value.isascii() and value.isdigit()):
            raise bad(f"{HEADER_LENGTH} must be a whole number of bytes, got {header_length!r}")
        n = int(value)
        if n > len(body):
            raise bad(f"{HEADER_LENGTH} is {n} but the body has only {len(body)} bytes")
        json_part, binary = body[:n], memoryview(body)[n:]
    request = json_object(json_part, "the inference request must be a JSON object", what="the inference request")
    return request, binary


def _flatten(data) -> list:
    """Nested JSON lists to one flat list (row-major)."""
    if not isinstance(data, list):
        return [data]
    flat, stack = [], [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                if len(stack) > 32:
                    raise bad("tensor data is nested too deeply")
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)



# ---------------------------------------------------------------------------------------------------- requests


@dataclass
class InferRequest:
    id: str | None
    input_name: str
    images: list[bytes] | None = None  # "image" input: encoded photos
    arrays: np.ndarray | None = None  # "images" input: pre-processed float32 [N, 3, S, S]
    outputs: list[tuple[str, bool]] = field(default_factory=list)  # (name, binary)

    @property
    def size(self) -> int:
        return len(self.images) if self.images is not None else len(self.arrays)


def parse_request(request: dict, binary: memoryview, input_shape: list[int], max_images: int) -> InferRequest:
    """Check an inference request against the protocol and this model; RequestError (400/413) if it does not fit."""
    request_id, params, tensor = request_header(request)
    name, shape, raw = input_header(tensor, binary)
    if name == IMAGE_INPUT:
        parsed = InferRequest(request_id, name, images=image_input(tensor, shape, raw, max_images))
    else:
        parsed = InferRequest(request_id, name, arrays=array_input(tensor, shape, raw, input_shape, max_images))
    used = 0 if raw is None else len(raw)
    if used != len(binary):
        raise bad(f"{len(binary) - used} byte(s) of binary data after the JSON belong to no input "
                  f"(the inputs' binary_data_size add up to {used})")
    parsed.outputs = parse_outputs(request.get("outputs"), params)
    return parsed


def request_header(request: dict) -> tuple[str | None, dict, dict]:
    """(id, parameters, the one input tensor) of an inference request."""
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise bad('"id" must be a string')
    params = request.get("parameters") or {}
    if not isinstance(params, dict):
        raise bad('"parameters" must be an object')
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise bad('"inputs" must be a non-empty list')
    if len(inputs) != 1:
        raise bad(f'give exactly one input, "{IMAGE_INPUT}" (BYTES) or "{ARRAY_INPUT}" (FP32), not {len(inputs)}')
    if not isinstance(inputs[0], dict):
        raise bad("each input must be an object")
    return request_id, params, inputs[0]


def input_header(tensor: dict, binary: memoryview) -> tuple[str, list[int], memoryview | None]:
    """(name, shape, raw data) of the input tensor; raw data None when its values come as JSON "data"."""
    name, shape = tensor.get("name"), tensor.get("shape")
    if name not in (IMAGE_INPUT, ARRAY_INPUT):
        raise bad(f'unknown input {name!r}: this model takes "{IMAGE_INPUT}" (BYTES) or "{ARRAY_INPUT}" (FP32)')
    if not isinstance(shape, list) or not shape or not all(_is_int(d) and d >= 0 for d in shape):
        raise bad(f"input {name!r}: \"shape\" must be a non-empty list of whole numbers >= 0")
    tparams = tensor.get("parameters") or {}
    if not isinstance(tparams, dict):
        raise bad(f"input {name!r}: \"parameters\" must be an object")
    size = tparams.get("binary_data_size")
    if size is None:
        if "data" not in tensor:
            raise bad(f"input {name!r} has no \"data\" (nor binary_data_size)")
        return name, shape, None
    if not _is_int(size) or size < 0:
        raise bad(f"input {name!r}: binary_data_size must be a whole number >= 0")
    if "data" in tensor:
        raise bad(f"input {name!r}: give either \"data\" or binary_data_size, not both")
    if size > len(binary):
        raise bad(f"input {name!r}: binary_data_size {size} runs past the end of the binary data ({len(binary)} byte(s) left)")
    return name, shape, binary[:size]


def image_input(tensor: dict, shape: list[int], raw: memoryview | None, max_images: int) -> list[bytes]:
    """The encoded photos of the "image" input (BYTES): length-prefixed raw data, or base64 strings in JSON."""
    if tensor.get("datatype") != "BYTES":
        raise bad(f'input "{IMAGE_INPUT}" must have datatype BYTES (encoded photos), got {tensor.get("datatype")!r}')
    if raw is not None:
        images = deserialize_bytes(raw, f'input "{IMAGE_INPUT}"', max_images)
    else:
        data = _flatten(tensor["data"])
        if len(data) > max_images:
            raise too_many_images(len(data), max_images)
        images = [decode_base64(item, f"image[{i}]") for i, item in enumerate(data)]
    elements = math.prod(shape)
    if len(images) != elements:
        raise bad(f'input "{IMAGE_INPUT}": shape {shape} holds {elements} element(s) but {len(images)} were given')
    if not images:
        raise bad(f'input "{IMAGE_INPUT}" holds no photos')
    if len(images) > max_images:
        raise too_many_images(len(images), max_images)
    return images


def array_input(tensor: dict, shape: list[int], raw: memoryview | None, input_shape: list[int], max_images: int) -> np.ndarray:
    """The pre-processed photos of the "images" input (FP32 [N, 3, S, S]): little-endian raw data, or numbers in JSON."""
    if tensor.get("datatype") != "FP32":
        raise bad(f'input "{ARRAY_INPUT}" must have datatype FP32, got {tensor.get("datatype")!r}')
    want = list(input_shape)
    if len(shape) != 4 or shape[1:] != want:
        raise bad(f'input "{ARRAY_INPUT}": shape must be [N, {", ".join(map(str, want))}], got {shape}')
    if shape[0] < 1:
        raise bad(f'input "{ARRAY_INPUT}" holds no photos')
    if shape[0] > max_images:
        raise too_many_images(shape[0], max_images)
    arrays = raw_fp32(raw, shape) if raw is not None else json_fp32(tensor["data"], shape)
    if not np.isfinite(arrays).all():
        raise bad(f'input "{ARRAY_INPUT}": values must be finite FP32 numbers (no NaN or infinity)')
    return arrays.reshape(shape)


def raw_fp32(raw: memoryview, shape: list[int]) -> np.ndarray:
    elements = math.prod(shape)
    if len(raw) != elements * 4:
        raise bad(f'input "{ARRAY_INPUT}": shape {shape} needs {elements * 4} bytes of FP32 data, got {len(raw)}')
    return np.frombuffer(raw, dtype="<f4").astype(np.float32)


def json_fp32(data, shape: list[int]) -> np.ndarray:
    elements = math.prod(shape)
    values = _flatten(data)
    if len(values) != elements:
        raise bad(f'input "{ARRAY_INPUT}": shape {shape} holds {elements} values but {len(values)} were given')
    if not all((isinstance(v, (int, float)) and not isinstance(v, bool)) for v in values):
        raise bad(f'input "{ARRAY_INPUT}": FP32 data must be numbers')
    try:
        with np.errstate(over="ignore"):
            return np.asarray(values, dtype=np.float64).astype(np.float32)
    except (OverflowError, ValueError):
        raise bad(f'input "{ARRAY_INPUT}": values must be finite FP32 numbers') from None


def parse_outputs(outputs, params: dict) -> list[tuple[str, bool]]:
    """(name, binary) per output to return."""
    default_binary = params.get("binary_data_output", False)
    if not isinstance(default_binary, bool):
        raise bad("binary_data_output must be true or false")
    if outputs is None or outputs == []:  # none named: every output
        return [(name, default_binary) for name in OUTPUTS]
    if not isinstance(outputs, list):
        raise bad('"outputs" must be a list')
    chosen, seen = [], set()
    for tensor in outputs:
        if not isinstance(tensor, dict):
            raise bad("each requested output must be an object")
        name = tensor.get("name")
        if name not in OUTPUTS:
            raise bad(f"unknown output {name!r}: choose from {', '.join(OUTPUTS)}")
        if name in seen:
            raise bad(f"output {name!r} is requested twice")
        seen.add(name)
        oparams = tensor.get("parameters") or {}
        if not isinstance(oparams, dict):
            raise bad(f"output {name!r}: \"parameters\" must be an object")
        if oparams.get("classification"):
            raise bad("the classification extension is not supported: request \"label\" and \"probabilities\" instead")
        binary = oparams.get("binary_data", default_binary)
        if not isinstance(binary, bool):
            raise bad(f"output {name!r}: binary_data must be true or false")
        chosen.append((name, binary))
    return chosen


# ---------------------------------------------------------------------------------------------------- responses


def build_response(model_name: str, version: str, request: InferRequest, prediction: Prediction) -> tuple[bytes, dict[str, str], str]:
    """(body, extra headers, media type) of the inference response: the prediction's tensors, never rounded."""
    tensors = prediction.tensors()
    outputs, chunks = [], []
    for name, binary in request.outputs:
        datatype, values = OUTPUTS[name], tensors[name]
        shape = [len(values)] if datatype == "BYTES" else list(values.shape)
        entry = {"name": name, "datatype": datatype, "shape": shape}
        if binary:
            raw = serialize_bytes(values) if datatype == "BYTES" else np.ascontiguousarray(values, dtype=NP_TYPES[datatype]).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif datatype == "BYTES":
            entry["data"] = [v.decode() for v in values]
        elif datatype == "INT64":
            entry["data"] = [int(v) for v in np.ravel(values)]
        else:  # float32 -> shortest decimal that reads back as the same float32
            entry["data"] = [float(np.format_float_positional(v, unique=True, trim="-")) for v in np.ravel(values)]
        outputs.append(entry)
    reply = {"model_name": model_name, "model_version": version}
    if request.id is not None:
        reply["id"] = request.id
    reply["outputs"] = outputs
    header = json.dumps(reply, separators=(",", ":")).encode()
    if not chunks:
        return header, {}, "application/json"
    return header + b"".join(chunks), {HEADER_LENGTH: str(len(header))}, "application/octet-stream"


# ---------------------------------------------------------------------------------------------------- metadata


def model_metadata(plane) -> dict:
    signature = plane.signature
    backend = getattr(plane.counter, "backend_name", "onnx")
    return {
        "name": plane.name,
        "versions": [plane.version],
        "platform": PLATFORMS.get(backend, backend),
        "inputs": [tensor.to_dict() for tensor in signature.inputs],
        "outputs": [tensor.to_dict() for tensor in signature.outputs],
        "parameters": {"classes": list(signature.classes), "backend": backend},
    }


TENSOR_SCHEMA = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string", "enum": [IMAGE_INPUT, ARRAY_INPUT]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": ["BYTES", "FP32"]},
        "parameters": {"type": "object", "properties": {"binary_data_size": {"type": "integer", "minimum": 0}}},
        "data": {"type": "array", "items": {}},
    },
}
INFER_OPENAPI = {
    "requestBody": {
        "required": True,
        "description": "An Open Inference Protocol v2 inference request. With the binary tensor data extension the body is the "
                       "JSON request followed by raw tensor data, and the header Inference-Header-Content-Length gives the JSON's length.",
        "content": {"application/json": {"schema": {
            "type": "object",
            "required": ["inputs"],
            "properties": {
                "id": {"type": "string"},
                "parameters": {"type": "object", "properties": {"binary_data_output": {"type": "boolean"}}},
                "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": TENSOR_SCHEMA},
                "outputs": {"type": "array", "items": {
                    "type": "object", "required": ["name"],
                    "properties": {"name": {"type": "string", "enum": list(OUTPUTS)},
                                   "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}}}}},
            },
        }}},
    },
    "parameters": [{"name": HEADER_LENGTH, "in": "header", "required": False, "schema": {"type": "integer", "minimum": 0},
                    "description": "Length of the JSON part when binary tensor data follows it."}],
}


ERRORS = error_responses({
    400: "invalid inference request", 401: "missing or wrong API key", 404: "unknown model or version",
    413: "body or photo count over the limit", 503: "not ready, or overloaded (Retry-After)", 504: "timed out"})


# ---------------------------------------------------------------------------------------------------- the router


def v2_router(plane: DataPlane, config: ServeConfig) -> APIRouter:
    """The protocol's routes: server health and metadata, model metadata and readiness, inference."""
    router = APIRouter(tags=["Open Inference Protocol v2"])
    add_server_routes(router, plane)
    add_model_routes(router, plane)
    add_infer_routes(router, plane, config)
    return router


def add_server_routes(router: APIRouter, plane: DataPlane) -> None:
    @router.get("/v2", summary="Server metadata")
    async def server_metadata():
        return {"name": SERVER_NAME, "version": bintally.__version__, "extensions": EXTENSIONS}

    @router.get("/v2/health/live", summary="Liveness")
    async def live():
        return JSONResponse({"live": True}) if plane.live else JSONResponse({"live": False}, status_code=503)

    @router.get("/v2/health/ready", summary="Readiness: 200 only once the model is loaded and warmed up")
    async def ready():
        return JSONResponse({"ready": True}) if plane.ready else JSONResponse({"ready": False}, status_code=503)


def add_model_routes(router: APIRouter, plane: DataPlane) -> None:
    async def metadata(name: str, version: str | None = None):
        plane.require_model(name, version)
        return model_metadata(plane)

    async def model_ready(name: str, version: str | None = None):
        plane.require_model(name, version)
        ok = plane.ready
        return JSONResponse({"name": plane.name, "ready": ok}, status_code=200 if ok else 503)

    @router.get("/v2/models/{name}", summary="Model metadata", responses=ERRORS)
    async def model_metadata_latest(name: str):
        return await metadata(name)

    @router.get("/v2/models/{name}/versions/{version}", summary="Model metadata (one version)", responses=ERRORS)
    async def model_metadata_version(name: str, version: str):
        return await metadata(name, version)

    @router.get("/v2/models/{name}/ready", summary="Model readiness", responses=ERRORS)
    async def model_ready_latest(name: str):
        return await model_ready(name)

    @router.get("/v2/models/{name}/versions/{version}/ready", summary="Model readiness (one version)", responses=ERRORS)
    async def model_ready_version(name: str, version: str):
        return await model_ready(name, version)


async def inference_body(request: Request, max_body: int) -> bytes:
    """The request body, decompressed, within the body limit."""
    body = await request.body()
    if len(body) > max_body:
        raise RequestError(413, f"the body has {len(body)} bytes; the limit is {max_body}")
    return decompress(body, request.headers.get("content-encoding"), max_body)


def add_infer_routes(router: APIRouter, plane: DataPlane, config: ServeConfig) -> None:
    async def infer(request: Request, name: str, version: str | None = None):
        plane.require_model(name, version)
        body = await inference_body(request, config.max_body_bytes)
        parsed = parse_request(*split_body(body, request.headers.get(HEADER_LENGTH)), plane.input_shape, config.max_images)
        prediction = await _run(plane, parsed)
        content, headers, media = build_response(plane.name, plane.version, parsed, prediction)
        return Response(content, media_type=media, headers=headers)

    @router.post("/v2/models/{name}/infer", summary="Count the items in photos", openapi_extra=INFER_OPENAPI, responses=ERRORS)
    async def infer_latest(request: Request, name: str):
        return await infer(request, name)

    @router.post("/v2/models/{name}/versions/{version}/infer", summary="Count the items in photos (one version)",
                 openapi_extra=INFER_OPENAPI, responses=ERRORS)
    async def infer_version(request: Request, name: str, version: str):
        return await infer(request, name, version)


async def _run(plane, parsed: InferRequest) -> Prediction:
    if parsed.images is not None:
        return await plane.predict_images(parsed.images, [f"image[{i}]" for i in range(len(parsed.images))])
    return await plane.predict_arrays(parsed.arrays)


