"""`bintally serve`: an HTTP count server (FastAPI on uvicorn) with dynamic micro-batching.

One data plane (`dataplane.DataPlane`: load, decode, batch, infer, predict, fetch by URI through `bintally.sources`)
behind thin protocol adapters: the bintally REST API and SageMaker (`rest`: /v1/count, /ping, /invocations), the Open
Inference Protocol v2 (`v2`: /v2/...), the web page (`web`: /) and the audit API (`audit_api`: /v1/audit-runs, /v1/tasks,
/audit). Every adapter reads bodies with `bodies`, renders the `Prediction` it gets back (REST rows, v2 tensors) and
refuses with `errors.RequestError` (JSON {"error": ...}); `security` holds the middlewares, `app` puts it together,
`server` runs it. See docs/serving.md.
"""

from bintally.serving.config import ServeConfig

__all__ = ["ServeConfig"]
