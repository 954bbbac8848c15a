"""Prometheus metrics of one server process (one CollectorRegistry per app, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """bintally_* metrics; `observe_request(code=...)` is what every protocol adapter records a request with."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, model: str = "", version: str = ""):
        self.registry = CollectorRegistry()
        self.model, self.version = model, version
        r = self.registry
        self.requests = Counter("bintally_inference_requests", "Inference requests answered, by HTTP status code.",
                                ["model", "version", "code"], registry=r)
        self.request_duration = Histogram("bintally_request_duration_seconds", "Inference request time, from arrival to answer.",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.queue_duration = Histogram("bintally_queue_duration_seconds", "Time an image waited in the batching queue.",
                                        buckets=LATENCY_BUCKETS, registry=r)
        self.preprocess_duration = Histogram("bintally_preprocess_duration_seconds", "Decode + preprocess time per request.",
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.compute_duration = Histogram("bintally_compute_duration_seconds", "Model forward time per batch.",
                                          buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("bintally_batch_size", "Images per forward pass.", buckets=BATCH_BUCKETS, registry=r)
        self.images = Counter("bintally_images", "Images counted.", registry=r)
        self.inflight = Gauge("bintally_inflight_requests", "Inference requests being handled now.", registry=r)
        self.queue_depth = Gauge("bintally_queue_images", "Images waiting for the model now.", registry=r)
        self.rejected = Counter("bintally_inference_rejected", "Requests refused before inference, by reason "
                                "(overloaded, timeout, too_large, bad_input, unauthorized, forbidden, not_ready).",
                                ["reason"], registry=r)
        self.info = Gauge("bintally_model_info", "The model being served (value 1).", ["model", "version", "backend"], registry=r)
        self.ready = Gauge("bintally_ready", "1 while the server is ready for traffic.", registry=r)

    def set_model(self, model: str, version: str, backend: str) -> None:
        self.model, self.version = model, version
        self.info.labels(model, version, backend).set(1)

    def observe_request(self, code: int, seconds: float | None = None) -> None:
        """Record one answered inference request (any protocol) with its HTTP status."""
        self.requests.labels(self.model, self.version, str(code)).inc()
        if seconds is not None:
            self.request_duration.observe(seconds)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
