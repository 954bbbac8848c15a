"""A real local S3 (moto's server mode) seeded from the ABID mirror, and a fault-injecting proxy.

The proxy is a plain HTTP/1.1 server on loopback that forwards GET and HEAD to the S3 server and,
deterministically (a hash of the seed, method, path and attempt number), drops the connection
without a response, answers HTTP 500, sends the full Content-Length but half the body, or sends
the body with one byte changed; it can also add latency to every request and pause in the middle
of every body.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Self

import boto3
import httpx
from moto import backends
from moto.server import ThreadedMotoServer

CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}
FORWARDED_HEADERS = ("Content-Type", "ETag", "Last-Modified")
FAULTS = ("drop", "error", "truncate", "corrupt")
BODY_FAULTS = ("truncate", "corrupt")  # GET only


def cache_moto_module_list() -> None:
    """moto routes each request by listing its own package folder (about 180 stat calls), twice;
    the list never changes, and caching it halves the server's CPU time per request."""
    modules = tuple(backends.list_of_moto_modules())
    backends.list_of_moto_modules = lambda: modules


class LocalS3:
    """moto's S3 server on 127.0.0.1, on a free port, in a background thread."""

    def __init__(self):
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
        cache_moto_module_list()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.url = f"http://{host}:{port}"
        self.client = boto3.client("s3", endpoint_url=self.url, **CREDENTIALS)

    def seed(self, bucket: str, mirror: Path, ids: list[str], workers: int = 8) -> None:
        """Create `bucket` holding bin-images/<id>.jpg and metadata/<id>.json of each id from the mirror,
        readable anonymously like the public ABID bucket."""
        self.client.create_bucket(Bucket=bucket)
        keys = [f"{folder}/{i}.{ext}" for i in ids for folder, ext in (("bin-images", "jpg"), ("metadata", "json"))]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda key: self.put(bucket, key, (mirror / key).read_bytes()), keys))

    def put(self, bucket: str, key: str, body: bytes) -> None:
        self.client.put_object(Bucket=bucket, Key=key, Body=body, ACL="public-read")

    def stop(self) -> None:
        self.server.stop()


@dataclass
class Faults:
    drop: float = 0.0  # share of attempts answered by closing the connection, no response
    error: float = 0.0  # ... by HTTP 500
    truncate: float = 0.0  # ... (GET only) by the full Content-Length header, half the body, then close
    corrupt: float = 0.0  # ... (GET only) by the whole body with its middle byte changed
    faulty_attempts: int = 2  # attempts at one path beyond these are never faulty: enough retries always succeed
    latency: float = 0.0  # seconds added before every request is answered
    trickle: float = 0.0  # seconds between the two halves of every body: a slow transfer
    seed: int = 0

    def pick(self, method: str, path: str, attempt: int) -> str | None:
        """The fault for this attempt, or None; the same arguments always give the same answer."""
        if attempt >= self.faulty_attempts:
            return None
        digest = hashlib.sha256(f"{self.seed}|{method}|{path}|{attempt}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        for kind, share in zip(FAULTS, (self.drop, self.error, self.truncate, self.corrupt)):
            if u < share:
                return None if (kind in BODY_FAULTS and method != "GET") else kind
            u -= share
        return None


class FaultyProxy:
    """An HTTP proxy on 127.0.0.1 in front of `upstream`; `injected` counts the faults it caused."""

    def __init__(self, upstream: str, faults: Faults | None = None):
        self.upstream = upstream
        self.faults = faults or Faults()
        self.injected: Counter[str] = Counter()
        self.attempts: Counter[tuple[str, str]] = Counter()
        self.lock = threading.Lock()
        self.client = httpx.Client(limits=httpx.Limits(max_connections=64), headers={"Accept-Encoding": "identity"})
        handler = type("Handler", (ProxyHandler,), {"proxy": self})
        self.server = QuietServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.client.close()

    def next_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            attempt = self.attempts[method, path]
            self.attempts[method, path] += 1
            fault = self.faults.pick(method, path, attempt)
            if fault:
                self.injected[fault] += 1
        return fault

    def answer(self, handler: ProxyHandler) -> None:
        method = handler.command
        fault = self.next_fault(method, handler.path)
        time.sleep(self.faults.latency)
        if fault == "drop":
            handler.close_connection = True
            return
        if fault == "error":
            send(handler, 500, {}, b"injected fault")
            return
        upstream = self.client.request(method, self.upstream + handler.path)
        headers = {name: upstream.headers[name] for name in FORWARDED_HEADERS if name in upstream.headers}
        length = int(upstream.headers.get("Content-Length", len(upstream.content)))
        body = upstream.content
        if fault == "truncate":
            send(handler, upstream.status_code, headers, body[: len(body) // 2], length)
            handler.close_connection = True
            return
        if fault == "corrupt":
            middle = len(body) // 2
            body = body[:middle] + bytes([body[middle] ^ 0xFF]) + body[middle + 1:]
        send(handler, upstream.status_code, headers, body, length, self.faults.trickle)


class QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        """Connections cut by an injected fault, or by a client that gave up, are expected."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 does
    disable_nagle_algorithm = True  # else each body's second write waits ~40 ms for a delayed ACK
    proxy: FaultyProxy

    def do_GET(self) -> None:
        self.proxy.answer(self)

    def do_HEAD(self) -> None:
        self.proxy.answer(self)

    def log_message(self, *args) -> None:
        pass


def send(handler: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes,
         length: int | None = None, trickle: float = 0.0) -> None:
    """Answer with `body` under a Content-Length of `length` (default: the body's own length)."""
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body) if length is None else length))
    handler.end_headers()
    if handler.command == "HEAD":
        return
    half = len(body) // 2
    handler.wfile.write(body[:half])
    if trickle:
        time.sleep(trickle)
    handler.wfile.write(body[half:])
