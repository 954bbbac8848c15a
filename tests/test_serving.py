"""`bintally serve`: real uvicorn servers on 127.0.0.1, real HTTP (httpx), real ABID photos.

Every count is checked against `Counter.load(...).count_paths` on the same photos.
"""

from __future__ import annotations

import base64
import io
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bintally.inference import Counter
from bintally.paths import SAMPLE_DIR
from bintally.serving.config import SAGEMAKER_MODEL_DIR, SAGEMAKER_PORT_ENV, ServeConfig, default_port
from tests.cli_helpers import assert_one_line_error, run_cli
from tests.helpers import free_port
from tests.serving_threads import BACKEND, JPEG, PHOTOS, assert_same, metric_value, metrics, post_jpeg, reference_counts


@pytest.fixture(scope="module")
def reference(tiny_artifact) -> dict[str, dict]:
    return reference_counts(tiny_artifact)


def config_for(artifact, **options) -> ServeConfig:
    return ServeConfig(model=str(artifact.path), **({"backend": BACKEND, "threads": 1} | options))


@pytest.fixture(scope="module")
def server(tiny_artifact, serve_module):
    return serve_module(config_for(tiny_artifact, file_root=str(SAMPLE_DIR), max_wait_ms=25))


def slow_down(plane, seconds: float) -> None:
    infer = plane.batcher.infer
    plane.batcher.infer = lambda x: (time.sleep(seconds), infer(x))[1]


# ------------------------------------------------------------------------------------------------ /v1/count
def test_count_jpeg_bytes(server, reference, tiny_artifact):
    r = post_jpeg(server.url, PHOTOS[0])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == tiny_artifact.name and body["version"] == tiny_artifact.version
    assert body["request_id"] == r.headers["x-request-id"]
    assert len(body["results"]) == 1 and "image" not in body["results"][0]
    assert_same(body["results"][0], reference[PHOTOS[0].name])


def test_count_png_bytes_of_the_same_pixels(server, reference):
    buffer = io.BytesIO()
    Image.open(PHOTOS[1]).convert("RGB").save(buffer, "PNG")
    r = httpx.post(server.url + "/v1/count", content=buffer.getvalue(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    assert_same(r.json()["results"][0], reference[PHOTOS[1].name])


def test_multipart_three_files_in_order(server, reference):
    photos = PHOTOS[2:5]
    files = [("file", (p.name, p.read_bytes(), JPEG)) for p in photos]
    r = httpx.post(server.url + "/v1/count", files=files)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["image"] for x in results] == [p.name for p in photos]
    for result, photo in zip(results, photos):
        assert_same(result, reference[photo.name])


def test_json_image_b64_and_data_url(server, reference):
    data = base64.b64encode(PHOTOS[5].read_bytes()).decode()
    for value in (data, f"data:image/jpeg;base64,{data}"):
        r = httpx.post(server.url + "/v1/count", json={"image_b64": value})
        assert r.status_code == 200, r.text
        assert_same(r.json()["results"][0], reference[PHOTOS[5].name])


def test_json_images_batch_of_b64_and_file_uris(server, reference):
    photos = PHOTOS[6:10]
    items = [{"image_b64": base64.b64encode(p.read_bytes()).decode()} if i % 2 else {"uri": p.resolve().as_uri()}
             for i, p in enumerate(photos)]
    r = httpx.post(server.url + "/v1/count", json={"images": items})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == 4
    assert results[0]["image"] == photos[0].resolve().as_uri() and "image" not in results[1]
    for result, photo in zip(results, photos):
        assert_same(result, reference[photo.name])


def test_uri_file_under_the_root(server, reference):
    r = httpx.post(server.url + "/v1/count", json={"uri": PHOTOS[10].resolve().as_uri()})
    assert r.status_code == 200, r.text
    assert_same(r.json()["results"][0], reference[PHOTOS[10].name])
    missing = httpx.post(server.url + "/v1/count", json={"uri": (SAMPLE_DIR / "bin-images" / "nope.jpg").resolve().as_uri()})
    assert missing.status_code == 400 and "no such file" in missing.json()["error"]


def test_request_id_is_echoed_or_made(server):
    given = post_jpeg(server.url, PHOTOS[0], headers={"X-Request-ID": "client-42.a"})
    assert given.headers["x-request-id"] == "client-42.a" and given.json()["request_id"] == "client-42.a"
    made = [post_jpeg(server.url, PHOTOS[0]).headers["x-request-id"] for _ in range(2)]
    assert made[0] != made[1] and all(len(m) == 32 for m in made)
    odd = post_jpeg(server.url, PHOTOS[0], headers={"X-Request-ID": "has spaces <script>"})
    assert odd.headers["x-request-id"] != "has spaces <script>"
    assert httpx.get(server.url + "/ping", headers={"X-Request-ID": "p1"}).headers["x-request-id"] == "p1"


def test_errors_are_json_never_500(server):
    cases = [(httpx.post, "/v1/count", {"content": b"{", "headers": {"Content-Type": "application/json"}}, 400),
             (httpx.post, "/v1/count", {"json": {"image_b64": "!!!"}}, 400),
             (httpx.post, "/v1/count", {"json": {"images": []}}, 400),
             (httpx.post, "/v1/count", {"json": {"uri": "x", "image_b64": "y"}}, 400),
             (httpx.post, "/v1/count", {"json": [1, 2]}, 400),
             (httpx.post, "/v1/count", {"content": b"", "headers": {"Content-Type": JPEG}}, 400),
             (httpx.post, "/v1/count", {"files": [("a", (None, "text"))]}, 400),
             (httpx.get, "/v1/count", {}, 405),
             (httpx.get, "/nowhere", {}, 404)]
    for method, path, kw, code in cases:
        r = method(server.url + path, **kw)
        assert r.status_code == code, (path, kw, r.status_code, r.text)
        assert r.headers["content-type"] == "application/json" and r.json()["error"], r.text


def test_model_metadata_docs_and_openapi(server, tiny_artifact):
    info = httpx.get(server.url + "/v1/model").json()
    assert info["name"] == tiny_artifact.name and info["version"] == tiny_artifact.version and info["backend"] == BACKEND
    assert info["classes"] == ["0", "1", "2", "3", "4", "5", "6+"] and info["inputs"][0]["shape"] == [-1, 3, 64, 64]
    docs = httpx.get(server.url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    spec = httpx.get(server.url + "/openapi.json").json()
    body = spec["paths"]["/v1/count"]["post"]["requestBody"]["content"]
    assert {"image/jpeg", "image/png", "multipart/form-data", "application/json"} <= set(body)
    assert {"/ping", "/invocations", "/metrics"} <= set(spec["paths"])


# ------------------------------------------------------------------------------------------------ SageMaker
def test_sagemaker_ping_and_invocations(server, reference):
    ping = httpx.get(server.url + "/ping")
    assert ping.status_code == 200 and ping.content == b""
    r = post_jpeg(server.url, PHOTOS[11], path="/invocations")
    assert r.status_code == 200, r.text
    assert_same(r.json()["results"][0], reference[PHOTOS[11].name])
    r = httpx.post(server.url + "/invocations", json={"uri": PHOTOS[12].resolve().as_uri()})
    assert r.status_code == 200, r.text
    assert_same(r.json()["results"][0], reference[PHOTOS[12].name])
    r = httpx.post(server.url + "/invocations", content=PHOTOS[12].read_bytes(), headers={"Content-Type": "application/x-image"})
    assert r.status_code == 200


def test_torch_backend_serves_the_same_counts_as_torch_predict(tiny_artifact, serve):
    expected, _ = Counter.load(tiny_artifact.path, "torch").count_paths(PHOTOS[:3], progress=False)
    s = serve(config_for(tiny_artifact, backend="torch"))
    files = [("file", (p.name, p.read_bytes(), JPEG)) for p in PHOTOS[:3]]
    r = httpx.post(s.url + "/v1/count", files=files)
    assert r.status_code == 200, r.text
    assert httpx.get(s.url + "/v1/model").json()["backend"] == "torch"
    for result, want in zip(r.json()["results"], expected):
        assert_same(result, want)


def test_default_port_follows_sagemaker(monkeypatch):
    monkeypatch.delenv(SAGEMAKER_PORT_ENV, raising=False)
    assert default_port() == 8080
    monkeypatch.setenv(SAGEMAKER_PORT_ENV, "9123")
    assert default_port() == 9123


# ------------------------------------------------------------------------------------------------ metrics, batching, load
def test_metrics_move(server):
    before = metrics(server.url)
    assert post_jpeg(server.url, PHOTOS[0]).status_code == 200
    assert httpx.post(server.url + "/v1/count", content=b"junk", headers={"Content-Type": JPEG}).status_code == 400
    after = httpx.get(server.url + "/metrics")
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text
    for name in ("bintally_request_duration_seconds_count", "bintally_queue_duration_seconds_count",
                 "bintally_compute_duration_seconds_count", "bintally_batch_size_count"):
        assert metric_value(text, name) > metric_value(before, name), name
    assert metric_value(text, "bintally_inference_requests_total", code="200") == \
        metric_value(before, "bintally_inference_requests_total", code="200") + 1
    assert metric_value(text, "bintally_inference_requests_total", code="400") == \
        metric_value(before, "bintally_inference_requests_total", code="400") + 1
    assert metric_value(text, "bintally_inference_rejected_total", reason="bad_input") > \
        metric_value(before, "bintally_inference_rejected_total", reason="bad_input")
    assert metric_value(text, "bintally_model_info", backend=BACKEND) == 1
    assert metric_value(text, "bintally_inflight_requests") == 0
    assert metric_value(text, "bintally_ready") == 1


def test_concurrent_requests_are_batched_and_correct(server, reference):
    before = metrics(server.url)
    photos = PHOTOS[:16]
    start = threading.Barrier(len(photos))

    def one(photo):
        with httpx.Client() as client:
            start.wait()
            return client.post(server.url + "/v1/count", content=photo.read_bytes(), headers={"Content-Type": JPEG})

    with ThreadPoolExecutor(len(photos)) as pool:
        answers = list(pool.map(one, photos))
    for answer, photo in zip(answers, photos):
        assert answer.status_code == 200, answer.text
        assert_same(answer.json()["results"][0], reference[photo.name])
    after = metrics(server.url)
    batches = metric_value(after, "bintally_batch_size_count") - metric_value(before, "bintally_batch_size_count")
    singles = metric_value(after, "bintally_batch_size_bucket", le="1.0") - metric_value(before, "bintally_batch_size_bucket", le="1.0")
    images = metric_value(after, "bintally_batch_size_sum") - metric_value(before, "bintally_batch_size_sum")
    assert images == 16 and batches < 16 and singles < batches, (batches, singles)  # at least one forward pass of > 1 image


def test_overload_answers_503_with_retry_after_never_another_5xx(tiny_artifact, serve):
    s = serve(config_for(tiny_artifact, queue_size=2, max_batch_size=1, max_wait_ms=0))
    slow_down(s.plane, 0.15)
    photo = PHOTOS[0].read_bytes()

    def one(_):
        return httpx.post(s.url + "/v1/count", content=photo, headers={"Content-Type": JPEG}, timeout=30)

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(one, range(12)))
    codes = sorted(a.status_code for a in answers)
    assert set(codes) == {200, 503}, codes
    for a in answers:
        if a.status_code == 503:
            assert a.headers["retry-after"].isdigit() and "busy" in a.json()["error"]
    text = metrics(s.url)
    assert metric_value(text, "bintally_inference_rejected_total", reason="overloaded") == codes.count(503)
    assert metric_value(text, "bintally_inference_requests_total", code="503") == codes.count(503)


def test_timeout_answers_504(tiny_artifact, serve):
    s = serve(config_for(tiny_artifact, timeout_s=0.3))
    slow_down(s.plane, 1.0)
    r = post_jpeg(s.url, PHOTOS[0])
    assert r.status_code == 504 and "timeout" in r.json()["error"]
    assert httpx.get(s.url + "/ping").status_code == 200  # the event loop answered while the model was busy


def test_health_answers_while_the_model_computes(tiny_artifact, serve):
    s = serve(config_for(tiny_artifact))
    slow_down(s.plane, 1.5)
    with ThreadPoolExecutor(1) as pool:
        busy = pool.submit(post_jpeg, s.url, PHOTOS[0])
        time.sleep(0.3)
        t0 = time.monotonic()
        assert httpx.get(s.url + "/ping").status_code == 200
        assert time.monotonic() - t0 < 0.5
        assert busy.result().status_code == 200


# ------------------------------------------------------------------------------------------------ readiness
def test_not_ready_before_the_model_is_loaded(tiny_artifact, reference, serve):
    s = serve(config_for(tiny_artifact), load=False)
    assert httpx.get(s.url + "/ping").status_code == 503
    r = post_jpeg(s.url, PHOTOS[0])
    assert r.status_code == 503 and r.headers["retry-after"] and "not ready" in r.json()["error"]
    assert httpx.get(s.url + "/metrics").status_code == 200  # live: the process answers
    s.plane.load()
    assert httpx.get(s.url + "/ping").status_code == 200
    assert_same(post_jpeg(s.url, PHOTOS[0]).json()["results"][0], reference[PHOTOS[0].name])


def test_not_ready_once_shutdown_begins_but_requests_still_served(tiny_artifact, serve):
    s = serve(config_for(tiny_artifact))
    assert httpx.get(s.url + "/ping").status_code == 200
    s.plane.begin_shutdown()
    assert httpx.get(s.url + "/ping").status_code == 503
    assert post_jpeg(s.url, PHOTOS[0]).status_code == 200  # until uvicorn closes the listener and drains
    assert metric_value(metrics(s.url), "bintally_ready") == 0


# ------------------------------------------------------------------------------------------------ a real process: CLI, SIGTERM
def slow_upload(data: bytes, pause: float):
    """A chunked body sent in two halves `pause` seconds apart: a request that is in flight for that long."""
    yield data[: len(data) // 2]
    time.sleep(pause)
    yield data[len(data) // 2:]


def test_sigterm_lets_requests_in_flight_finish_then_exits_0(tiny_artifact, reference, serve_process):
    process, url = serve_process(tiny_artifact.path, "--shutdown-delay", "0.8")
    photos = PHOTOS[:3]
    with ThreadPoolExecutor(3) as pool:
        inflight = [pool.submit(httpx.post, url + "/v1/count", content=slow_upload(p.read_bytes(), 2.0),
                                headers={"Content-Type": JPEG}, timeout=30) for p in photos]
        time.sleep(0.5)
        process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert httpx.get(url + "/ping", timeout=5).status_code == 503  # not ready during the delay
        answers = [f.result() for f in inflight]
    for answer, photo in zip(answers, photos):
        assert answer.status_code == 200, answer.text
        assert_same(answer.json()["results"][0], reference[photo.name])
    output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert "Traceback" not in output
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/ping", timeout=2)


@pytest.mark.slow
def test_workers_serve_and_stop_on_sigterm(tiny_artifact, reference, serve_process):
    process, url = serve_process(tiny_artifact.path, "--workers", "2")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda p: post_jpeg(url, p), PHOTOS[:8]))
    for answer, photo in zip(answers, PHOTOS[:8]):
        assert answer.status_code == 200, answer.text
        assert_same(answer.json()["results"][0], reference[photo.name])
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 0, output
    assert output.count("Application startup complete") == 2, output


def test_cli_errors_are_one_line_exit_2_before_binding(tiny_artifact, tmp_path):
    port = free_port()
    if not Path(SAGEMAKER_MODEL_DIR).is_dir():
        assert_one_line_error(run_cli("serve", "--port", port), "no model", SAGEMAKER_MODEL_DIR)
    assert_one_line_error(run_cli("serve", "--model", tmp_path / "nothing", "--port", port), "nothing")
    model = ["--model", tiny_artifact.path, "--backend", "torch"]
    assert_one_line_error(run_cli("serve", *model, "--port", "0"), "--port")
    assert_one_line_error(run_cli("serve", *model, "--backend", "tf"), "--backend")
    assert_one_line_error(run_cli("serve", *model, "--workers", "0"), "--workers")
    assert_one_line_error(run_cli("serve", *model, "--file-root", tmp_path / "missing", "--port", port), "--file-root")
    assert_one_line_error(run_cli("serve", *model, "--api-key-file", tmp_path / "missing", "--port", port), "--api-key-file")
    assert_one_line_error(run_cli("serve", *model, "--allow-https-host", "http://x.com/", "--port", port), "--allow-https-host")
    (tmp_path / "model.json").write_text("{not json")
    assert_one_line_error(run_cli("serve", "--model", tmp_path, "--port", port), "model.json")
    with socket_on(port):
        assert_one_line_error(run_cli("serve", *model, "--port", port), "cannot listen", str(port))


class socket_on:
    def __init__(self, port: int):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.sock.close()
