"""`bintally serve`: an HTTP count server (FastAPI on uvicorn) with dynamic micro-batching.

One data plane (`DataPlane`: load, decode, batch, infer, predict) behind thin protocol adapters:
the bintally REST API (/v1/count), SageMaker (/ping, /invocations), the Open Inference Protocol v2
(/v2/...) and a web page (/). See docs/serving.md.
"""

from bintally.serving.config import ServeConfig

__all__ = ["ServeConfig"]
