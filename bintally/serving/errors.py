"""The one way the server refuses a request: raise `RequestError`; every refusal is answered as JSON {"error": message}.

The app's handler answers it (`error_response`) and, unless it says otherwise, counts it in
bintally_inference_rejected_total{reason}. `error_responses` documents the same body in the OpenAPI schema.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from bintally.sources import SourceError, SourceProblem

RETRY_AFTER_S = 1
REASONS = {400: "bad_input", 401: "unauthorized", 403: "forbidden", 404: "not_found", 413: "too_large", 415: "bad_input",
           422: "bad_input", 503: "overloaded", 504: "timeout"}
SOURCE_STATUS = {SourceProblem.INVALID: 400, SourceProblem.MISSING: 400, SourceProblem.REFUSED: 403, SourceProblem.TOO_LARGE: 413,
                 SourceProblem.UNSUPPORTED: 501, SourceProblem.UNREACHABLE: 502}
ERROR_SCHEMA = {"type": "object", "properties": {"error": {"type": "string"}}}


class RequestError(Exception):
    """A refused request: JSON {"error": message} with this status, plus optional headers.

    `reason` (the metric's label) defaults from the status: 400 bad_input, 403 forbidden, 413 too_large, 503 overloaded, ...
    `counted=False` for refusals that are not about inference (the audit API, the web page's files).
    """

    def __init__(self, status: int, message: str, headers: dict | None = None, reason: str | None = None, counted: bool = True):
        super().__init__(message)
        self.status, self.message, self.headers, self.counted = status, message, headers or {}, counted
        self.reason = reason or REASONS.get(status, "error" if status >= 500 else "bad_input")


def uncounted(status: int, message: str, headers: dict | None = None) -> RequestError:
    """A refusal that is not about inference (the audit API, dashboard sessions): not counted in the inference metrics."""
    return RequestError(status, message, headers, counted=False)


def not_ready_error() -> RequestError:
    return RequestError(503, "the model is not ready (loading, or the server is shutting down)",
                        {"Retry-After": str(RETRY_AFTER_S)}, reason="not_ready")


def too_many_images(n: int, limit: int) -> RequestError:
    return RequestError(413, f"too many images in one request: {n}, the limit is {limit}")


def source_refusal(e: SourceError) -> RequestError:
    """A photo that could not be fetched by URI, as the answer to the request that named it."""
    return RequestError(SOURCE_STATUS[e.problem], e.message)


def error_body(message: str) -> dict:
    return {"error": message}


def error_response(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(message), status_code=status, headers=headers)


def error_responses(descriptions: dict[int, str]) -> dict[str, dict]:
    """OpenAPI `responses` for refusals: status -> its description, each with the {"error": ...} body."""
    return {str(status): {"description": text, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
            for status, text in descriptions.items()}
