"""The one data plane behind every protocol: load the model, decode, batch, infer, predict.

Protocol adapters (rest.py: /v1/count and SageMaker; v2.py: the Open Inference Protocol; web.py; audit_api.py)
only parse their request format, call `predict_images`, `predict_arrays` or `fetch_uri`, and render the
`Prediction` (REST rows, v2 tensors); every refusal is a `RequestError` (a 4xx/5xx with a JSON {"error": ...}
body), never a 500 for bad input.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from bintally.data.images import decode_image
from bintally.errors import ConfigError, DataError
from bintally.inference.prediction import Prediction
from bintally.inference.signature import ARRAY_INPUT, ModelSignature
from bintally.serving.batcher import Batcher, Overloaded, Stopped
from bintally.serving.config import ServeConfig
from bintally.serving.errors import RETRY_AFTER_S, RequestError, not_ready_error, source_refusal, too_many_images
from bintally.serving.metrics import Metrics
from bintally.sources import SourceError, UriFetcher

log = logging.getLogger("bintally.serving")


class DataPlane:
    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = Metrics()
        self.counter = None
        self.batcher: Batcher | None = None
        self.name = config.name or ""
        self.version = ""
        self._warm = False
        self._shutting_down = False
        self._load_lock = threading.Lock()
        self.decode_pool = ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1)), thread_name_prefix="bintally-decode")
        self.fetcher = UriFetcher(config.source_policy())

    # ---- life cycle -------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model, start the inference thread and warm it up with one dummy batch; then ready.

        Raises ConfigError / DataError (one line) when the model cannot be loaded.
        """
        from bintally.inference import Counter

        with self._load_lock:
            if self._warm:
                return
            try:
                counter = Counter.load(self.config.model, backend=self.config.backend, device=self.config.device,
                                       threads=self.config.threads)
            except (DataError, ConfigError, OSError):
                raise
            except Exception as e:  # e.g. a CUDA device that is not there: still one line, exit 2
                raise ConfigError(f"cannot load the model {self.config.model} on {self.config.backend}/{self.config.device}: "
                                  f"{' '.join(str(e).split())[:300]}") from None
            artifact = counter.artifact
            self.counter = counter
            self.name = self.config.name or artifact.name
            self.version = artifact.version
            self.metrics.set_model(self.name, self.version, counter.backend_name)
            self._warm_up(counter)
            self.batcher = Batcher(counter.network_probabilities, self.config.max_batch_size, self.config.max_wait_ms,
                                   self.config.queue_size, self.metrics)
            self.batcher.start()
            self._warm = True
            self.metrics.ready.set(int(self.ready))
            log.info("model %s version %s loaded on %s and warmed up", self.name, self.version, counter.backend_name)

    def _warm_up(self, counter) -> None:
        """One dummy batch of 1 and one of 2 images: the first forward pass is slow (allocations, kernel choice), and
        a model that cannot take the batch sizes the batcher will send is refused now, not on the first request."""
        for n in sorted({1, min(2, self.config.max_batch_size)}):
            try:
                probs = counter.network_probabilities(np.zeros([n, *self.input_shape], np.float32))
            except Exception as e:  # noqa: BLE001 - any runtime failure here means the model cannot be served
                raise ConfigError(f"{counter.artifact.path}: the model fails on a batch of {n} image(s): "
                                  f"{' '.join(str(e).split())[:300]}") from None
            if probs.shape != (n, counter.labels.n_classes):
                raise ConfigError(f"{counter.artifact.path}: the model answers shape {list(probs.shape)} for {n} image(s), "
                                  f"expected [{n}, {counter.labels.n_classes}]")

    @property
    def live(self) -> bool:
        return True

    @property
    def loaded(self) -> bool:
        return self._warm

    @property
    def ready(self) -> bool:
        """Loaded and warmed up, and not shutting down."""
        return self._warm and not self._shutting_down

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def begin_shutdown(self) -> None:
        """Readiness false from now on; requests already admitted still finish."""
        if not self._shutting_down:
            log.info("shutting down: not ready any more; finishing the requests in flight")
        self._shutting_down = True
        self.metrics.ready.set(0)

    def close(self) -> None:
        """End the inference thread (after the queued work) and the decode threads."""
        self.begin_shutdown()
        if self.batcher:
            self.batcher.stop(timeout=self.config.timeout_s)
        self.decode_pool.shutdown(wait=False, cancel_futures=True)

    # ---- what the model is -------------------------------------------------------------------------------------
    @property
    def input_shape(self) -> list[int]:
        """[3, S, S]: one pre-processed photo."""
        return list(self.counter.signature.input(ARRAY_INPUT).shape[1:])

    @property
    def signature(self) -> ModelSignature:
        """The tensors the model served takes and gives: what both metadata endpoints (REST and v2) describe."""
        self.require_loaded()
        return self.counter.signature

    def metadata(self) -> dict:
        """Name, version, backend, classes, inputs/outputs and platform of the model served."""
        self.require_loaded()
        signature = self.signature
        info = self.counter.info()
        return {"name": self.name, "version": self.version, "backend": info["backend"], "platform": f"bintally-{info['backend']}",
                "runtime": info["runtime"], "backbone": info["backbone"], "head": info["head"], "classes": list(signature.classes),
                "decoding": info["decoding"], "tta": info["tta"], "image_size": info["image_size"], "metrics": info["metrics"],
                "inputs": [signature.input(ARRAY_INPUT).to_dict()], "outputs": [signature.output("probabilities").to_dict()]}

    # ---- inference ---------------------------------------------------------------------------------------------
    def require_loaded(self) -> None:
        if not self._warm:
            raise not_ready_error()

    def require_model(self, name: str, version: str | None = None) -> None:
        """The model a request names (and its version, if it names one) is the one served, and it is loaded: else 503/404."""
        self.require_loaded()
        if name != self.name:
            raise RequestError(404, f"unknown model {name!r}: this server serves {self.name!r}")
        if version is not None and version != self.version:
            raise RequestError(404, f"unknown version {version!r} of model {name!r}: this server serves version {self.version!r}")

    def _admit(self, n: int) -> None:
        # not `ready`: once shutdown begins, health checks say 503 so load balancers stop sending, but requests that
        # still arrive (or are still uploading) are served until uvicorn closes the listener and drains the connections
        self.require_loaded()
        if n > self.config.max_images:
            raise too_many_images(n, self.config.max_images)
        try:
            self.batcher.reserve(n)
        except Overloaded as e:
            raise RequestError(503, f"{e}; retry later", {"Retry-After": str(RETRY_AFTER_S)}) from None
        except Stopped:
            raise not_ready_error() from None

    async def _infer(self, arrays: np.ndarray, reserved: int) -> np.ndarray:
        """Hand reserved, pre-processed images to the batcher and wait (the caller bounds the time)."""
        try:
            job = self.batcher.submit(arrays)
        except Stopped:
            self.batcher.release(reserved)
            raise not_ready_error() from None
        try:
            return await asyncio.wrap_future(job.future)
        finally:
            job.future.cancel()  # a timed-out request leaves the queue (no-op once running)

    def _decode(self, data: bytes, name: str) -> np.ndarray:
        return self.counter.preprocess(decode_image(data, name=name))

    async def predict_images(self, images: list[bytes], names: list[str] | None = None) -> Prediction:
        """The prediction of each photo (encoded bytes), in order.

        An image that cannot be decoded refuses the request: 400 naming it (its name, else "image N").
        """
        names = names or [f"image {i + 1}" if len(images) > 1 else "the image" for i in range(len(images))]
        if not images:
            raise RequestError(400, "no image in the request")
        raw = await self.with_timeout(self._count(images, names))
        return self.counter.prediction(raw)

    async def _count(self, images: list[bytes], names: list[str]) -> np.ndarray:
        self._admit(len(images))
        submitted = False
        try:
            loop = asyncio.get_running_loop()
            t0 = time.perf_counter()
            tasks = [loop.run_in_executor(self.decode_pool, self._decode, data, name) for data, name in zip(images, names)]
            try:
                arrays = await asyncio.gather(*tasks)
            except DataError as e:
                raise RequestError(400, f"{e.path}: {e.problem}") from None
            finally:
                for task in tasks:
                    task.cancel()
            self.metrics.preprocess_duration.observe(time.perf_counter() - t0)
            submitted = True
            return await self._infer(np.stack(arrays), len(images))
        finally:
            if not submitted:
                self.batcher.release(len(images))

    async def predict_arrays(self, arrays: np.ndarray) -> Prediction:
        """The prediction of already pre-processed FP32 photos [N, 3, S, S]; a wrong shape is a 400."""
        self.require_loaded()
        shape = self.input_shape
        if not isinstance(arrays, np.ndarray) or arrays.ndim != 4 or list(arrays.shape[1:]) != shape or not len(arrays):
            got = list(arrays.shape) if isinstance(arrays, np.ndarray) else type(arrays).__name__
            raise RequestError(400, f"expected pre-processed images of shape [N, {', '.join(map(str, shape))}] with N >= 1, got {got}")
        if not np.isfinite(arrays).all():
            raise RequestError(400, "the images contain NaN or infinite values")
        arrays = np.ascontiguousarray(arrays, dtype=np.float32)

        async def run():
            self._admit(len(arrays))
            return await self._infer(arrays, len(arrays))

        return self.counter.prediction(await self.with_timeout(run()))

    async def with_timeout(self, work):
        """Run a request's work within the per-request timeout: 504 past it."""
        try:
            return await asyncio.wait_for(work, self.config.timeout_s)
        except asyncio.TimeoutError:
            raise RequestError(504, f"the request took longer than the {self.config.timeout_s:g} s timeout") from None

    async def fetch_uri(self, uri: str) -> bytes:
        """The bytes at an allowlisted s3://, https:// or file:// URI; else a 400/403/413/5xx RequestError."""
        try:
            return await self.with_timeout(self.fetcher.fetch(uri))
        except SourceError as e:
            raise source_refusal(e) from None
