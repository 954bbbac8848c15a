"""Dynamic micro-batching: concurrent requests share one forward pass.

Requests put pre-processed photos on a queue; one inference thread takes everything that is waiting,
up to `max_batch_size` images, after letting the oldest wait at most `max_wait_ms` for company, runs
one forward pass and hands each request its rows. The queue is bounded (`queue_size` images admitted
and not yet in a forward pass): beyond it a request is refused at once (`Overloaded` -> 503), never
left to hang. Inference runs in its own thread, so the event loop (health checks, new requests) keeps
answering while the model computes.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

log = logging.getLogger("bintally.serving")


class Overloaded(Exception):
    """More images waiting than the queue holds."""


class Stopped(Exception):
    """The batcher is stopped: the server is shutting down."""


@dataclass
class Job:
    arrays: np.ndarray  # [n, 3, S, S]
    future: Future = field(default_factory=Future)
    queued: float = field(default_factory=time.perf_counter)

    @property
    def n(self) -> int:
        return len(self.arrays)


class Batcher:
    def __init__(self, infer: Callable[[np.ndarray], np.ndarray], max_batch_size: int = 16, max_wait_ms: float = 5.0,
                 queue_size: int = 256, metrics=None):
        self.infer = infer
        self.max_batch_size, self.max_wait = max_batch_size, max_wait_ms / 1000
        self.queue_size = queue_size
        self.metrics = metrics
        self.jobs: collections.deque[Job] = collections.deque()
        self.admitted = 0  # images admitted and not yet taken into a forward pass (decoding or queued)
        self.lock = threading.Condition()
        self.stopping = False
        self.thread: threading.Thread | None = None

    # admission: a request reserves room for its images before decoding them, and gives it back if it fails
    def reserve(self, n: int) -> None:
        with self.lock:
            if self.stopping:
                raise Stopped("the server is shutting down")
            if self.admitted + n > self.queue_size:
                raise Overloaded(f"server busy: {self.admitted} images waiting, the queue holds {self.queue_size}")
            self.admitted += n
            self._gauge()

    def release(self, n: int) -> None:
        with self.lock:
            self.admitted -= n
            self._gauge()

    def _gauge(self) -> None:
        if self.metrics:
            self.metrics.queue_depth.set(self.admitted)

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="bintally-inference", daemon=True)
        self.thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the inference thread."""
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        if self.thread:
            self.thread.join(timeout)

    def submit(self, arrays: np.ndarray) -> Job:
        """Queue reserved images (see `reserve`); the job's future gets their probabilities."""
        job = Job(arrays)
        with self.lock:
            if self.stopping:
                raise Stopped("the server is shutting down")
            self.jobs.append(job)
            self.lock.notify_all()
        return job

    def _take(self) -> list[Job] | None:
        with self.lock:
            while not self.jobs:
                if self.stopping:
                    return None
                self.lock.wait()
            deadline = self.jobs[0].queued + self.max_wait
            while not self.stopping and sum(j.n for j in self.jobs) < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self.lock.wait(remaining)
            taken, size = [], 0
            while self.jobs and (not taken or size + self.jobs[0].n <= self.max_batch_size):
                job = self.jobs.popleft()
                taken.append(job)
                size += job.n
            self.admitted -= size
            self._gauge()
            return taken

    def _run(self) -> None:
        while True:
            taken = self._take()
            if taken is None:
                return
            now = time.perf_counter()
            jobs = [j for j in taken if j.future.set_running_or_notify_cancel()]  # timed-out requests are skipped
            if not jobs:
                continue
            if self.metrics:
                for job in jobs:
                    for _ in range(job.n):
                        self.metrics.queue_duration.observe(now - job.queued)
            batch = jobs[0].arrays if len(jobs) == 1 else np.concatenate([j.arrays for j in jobs])
            try:
                probs = self._forward(batch)
            except BaseException as e:  # a model failure fails this batch's requests (500), not the server
                log.error("inference failed: %s: %s", e.__class__.__name__, e)
                for job in jobs:
                    job.future.set_exception(e)
                continue
            start = 0
            for job in jobs:
                job.future.set_result(probs[start:start + job.n])
                start += job.n

    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """One forward pass per `max_batch_size` images (one request may bring more)."""
        out = []
        for i in range(0, len(batch), self.max_batch_size):
            chunk = batch[i:i + self.max_batch_size]
            t0 = time.perf_counter()
            out.append(self.infer(chunk))
            if self.metrics:
                self.metrics.compute_duration.observe(time.perf_counter() - t0)
                self.metrics.batch_size.observe(len(chunk))
                self.metrics.images.inc(len(chunk))
        return out[0] if len(out) == 1 else np.concatenate(out)
