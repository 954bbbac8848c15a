"""A real uvicorn server on 127.0.0.1 in a thread of the test process (fast: no new interpreter, no torch import),
and what the serving tests check its answers with. Tests start one through the fixtures of tests/servers.py.

The server is the one `bintally serve` runs (same app, same uvicorn settings); only signals stay with the
main thread, so SIGTERM is tested against a `python -m bintally serve` process instead.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
from pathlib import Path

import httpx

from bintally.paths import SAMPLE_DIR
from bintally.serving.app import create_app
from bintally.serving.config import ServeConfig
from bintally.serving.dataplane import DataPlane
from bintally.serving.server import bind, uvicorn_config

BACKEND = "onnx"  # the server's default: ONNX Runtime (a PyTorch run is exported once, cached by version)
PHOTOS = sorted((SAMPLE_DIR / "bin-images").glob("*.jpg"))[:24]  # real ABID photos
JPEG = "image/jpeg"


def reference_counts(artifact, backend: str = BACKEND) -> dict[str, dict]:
    """What `Counter.count_paths` says about PHOTOS, by file name: what the server must answer."""
    from bintally.inference import Counter

    results, failures = Counter.load(artifact.path, backend).count_paths(PHOTOS, progress=False)
    assert not failures
    return {Path(r["image"]).name: r for r in results}


def assert_same(result: dict, expected: dict) -> None:
    """Same count and label, every probability within 1e-4."""
    assert result["count"] == expected["count"] and result["label"] == expected["label"], (result, expected)
    assert result["probabilities"].keys() == expected["probabilities"].keys()
    for name, p in expected["probabilities"].items():
        assert abs(result["probabilities"][name] - p) <= 1e-4, (name, result, expected)
    assert abs(result["expected_count"] - expected["expected_count"]) <= 1e-3


def post_jpeg(url: str, photo: Path, path: str = "/v1/count", **kw) -> httpx.Response:
    return httpx.post(url + path, content=photo.read_bytes(), headers={"Content-Type": JPEG} | kw.pop("headers", {}), **kw)


class ServerThread:
    def __init__(self, config: ServeConfig, load: bool = True):
        import uvicorn

        self.sock = bind("127.0.0.1", 0)
        self.config = dataclasses.replace(config, port=self.sock.getsockname()[1], log_level="warning")
        self.plane = DataPlane(self.config)
        if load:
            self.plane.load()
        self.app = create_app(self.config, self.plane)
        self.server = uvicorn.Server(uvicorn_config(self.app, self.config))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.url = f"http://127.0.0.1:{self.config.port}"

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise AssertionError("the server thread did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()

    def metric(self, text: str, name: str, **labels) -> float:
        return metric_value(text, name, **labels)


def metric_value(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text (0 when absent); labels given must all match."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([^}]*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(have.get(k) == str(v) for k, v in labels.items()):
            total += float(m.group(4))
    return total


def metrics(url: str, **headers) -> str:
    return httpx.get(f"{url}/metrics", headers=headers).text


def sample_photo(name: str) -> tuple[Path, int]:
    """A bundled ABID photo and the EXPECTED_QUANTITY its metadata records."""
    photo = SAMPLE_DIR / "bin-images" / name
    return photo, json.loads((SAMPLE_DIR / "metadata" / f"{photo.stem}.json").read_text())["EXPECTED_QUANTITY"]
