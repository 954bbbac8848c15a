"""The Open Inference Protocol v2 endpoints, through the off-the-shelf Triton HTTP client, against a real server.

The counts must equal `Counter.count_paths` on the same real photos; every malformed request is a JSON 4xx.
"""

from __future__ import annotations

import base64
import json
import struct

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from bintally.data.images import decode_image
from bintally.paths import SAMPLE_DIR
from bintally.serving.v2 import deserialize_bytes, serialize_bytes, split_body
from tests.servers import AUTH, MAX_IMAGES

PHOTOS = [SAMPLE_DIR / "bin-images" / name for name in ("00450.jpg", "00452.jpg", "05360.jpg", "09010.jpg")]
HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def server(protocol_server):
    return protocol_server


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(url=server.url.removeprefix("http://"), connection_timeout=30, network_timeout=60)
    yield c
    c.close()


@pytest.fixture(scope="module")
def expected(tiny_artifact):
    from bintally.inference import Counter

    counter = Counter.load(tiny_artifact.path)
    results, failures = counter.count_paths(PHOTOS, progress=False)
    assert not failures
    arrays = np.stack([counter.preprocess(decode_image(p)) for p in PHOTOS])
    return {"results": results, "arrays": arrays, "classes": counter.labels.names, "name": counter.artifact.name,
            "version": counter.artifact.version}


def auth() -> dict:
    """A fresh headers dict per call: tritonclient writes Inference-Header-Content-Length into the dict it is given."""
    return dict(AUTH)


def jpegs() -> np.ndarray:
    return np.array([p.read_bytes() for p in PHOTOS], dtype=np.object_)


def check_outputs(result, expected, names=("count", "probabilities", "label", "confidence", "expected_count")):
    want = expected["results"]
    if "count" in names:
        assert result.as_numpy("count").tolist() == [r["count"] for r in want]
        assert result.as_numpy("count").dtype == np.int64
    if "probabilities" in names:
        probs = result.as_numpy("probabilities").reshape(len(want), -1)
        np.testing.assert_allclose(probs, [[r["probabilities"][c] for c in expected["classes"]] for r in want], atol=2e-4)
        np.testing.assert_allclose(probs.sum(1), 1, atol=2e-3)
    if "label" in names:
        assert [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("label").tolist()] == [r["label"] for r in want]
    if "confidence" in names:
        np.testing.assert_allclose(result.as_numpy("confidence"), [r["confidence"] for r in want], atol=2e-4)
    if "expected_count" in names:
        np.testing.assert_allclose(result.as_numpy("expected_count"), [r["expected_count"] for r in want], atol=2e-3)


# ------------------------------------------------------------------------------------------------ wire format (no server)


def test_bytes_tensor_roundtrip_and_truncation():
    elements = [b"", b"abc", bytes(range(256))]
    raw = serialize_bytes(elements)
    assert raw[:4] == struct.pack("<I", 0) and deserialize_bytes(raw) == elements
    with pytest.raises(Exception, match="claims 300 bytes"):
        deserialize_bytes(struct.pack("<I", 300) + b"x" * 10)
    with pytest.raises(Exception, match="stray byte"):
        deserialize_bytes(raw + b"\x01\x00")
    request, binary = split_body(b'{"inputs": []}tail', "14")
    assert request == {"inputs": []} and bytes(binary) == b"tail"


def test_not_ready_is_503_and_live_is_200(tiny_artifact, serve):
    """Before the model is loaded (or while shutting down): ready and model endpoints say 503, live says 200."""
    from bintally.serving.config import ServeConfig

    server = serve(ServeConfig(model=str(tiny_artifact.path), backend="torch"), load=False)
    with httpx.Client(base_url=server.url) as http:
        assert http.get("/v2/health/live").status_code == 200
        assert http.get("/v2/health/ready").status_code == 503
        for path in ("/v2/models/bin-counter", "/v2/models/bin-counter/ready"):
            r = http.get(path)
            assert r.status_code == 503 and "not ready" in r.json()["error"] and r.headers["retry-after"]
        r = http.post("/v2/models/bin-counter/infer", json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [B64]}]})
        assert r.status_code == 503 and "not ready" in r.json()["error"]


# ------------------------------------------------------------------------------------------------ the real server


def test_health_and_metadata(client, expected):
    assert client.is_server_live(headers=auth())
    assert client.is_server_ready(headers=auth())
    assert client.is_model_ready(expected["name"], headers=auth())
    assert client.is_model_ready(expected["name"], model_version=expected["version"], headers=auth())
    assert not client.is_model_ready("no-such-model", headers=auth())
    meta = client.get_server_metadata(headers=auth())
    assert meta["name"] == "bintally" and "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata(expected["name"], headers=auth())
    assert model["name"] == expected["name"] and model["versions"] == [expected["version"]]
    assert model["platform"] == "pytorch_libtorch"
    assert {i["name"]: (i["datatype"], i["shape"]) for i in model["inputs"]} == {"image": ("BYTES", [-1]), "images": ("FP32", [-1, 3, 64, 64])}
    assert {o["name"]: o["datatype"] for o in model["outputs"]} == {
        "count": "INT64", "probabilities": "FP32", "label": "BYTES", "confidence": "FP32", "expected_count": "FP32"}
    assert model["parameters"]["classes"] == expected["classes"]
    with pytest.raises(InferenceServerException, match="unknown model"):
        client.get_model_metadata("no-such-model", headers=auth())
    with pytest.raises(InferenceServerException, match="unknown version"):
        client.get_model_metadata(expected["name"], model_version="999", headers=auth())


def test_infer_binary_photos_mixed_outputs(client, expected):
    image = triton.InferInput("image", [len(PHOTOS)], "BYTES").set_data_from_numpy(jpegs(), binary_data=True)
    outputs = [triton.InferRequestedOutput("count", binary_data=True), triton.InferRequestedOutput("probabilities", binary_data=True),
               triton.InferRequestedOutput("label", binary_data=False)]
    result = client.infer(expected["name"], [image], outputs=outputs, request_id="req-7", headers=auth())
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_name"] == expected["name"] and response["model_version"] == expected["version"]
    assert [o["name"] for o in response["outputs"]] == ["count", "probabilities", "label"]
    assert response["outputs"][2]["data"] == [r["label"] for r in expected["results"]]  # JSON, the others binary
    assert "binary_data_size" in response["outputs"][0]["parameters"]
    check_outputs(result, expected, ("count", "probabilities", "label"))


def test_infer_json_base64_photos_all_outputs(client, expected):
    encoded = np.array([base64.b64encode(p.read_bytes()) for p in PHOTOS], dtype=np.object_)
    image = triton.InferInput("image", [len(PHOTOS)], "BYTES").set_data_from_numpy(encoded, binary_data=False)
    # no outputs named: all of them, binary; the request gzip-compressed
    result = client.infer(expected["name"], [image], model_version=expected["version"], headers=auth(), request_compression_algorithm="gzip")
    assert len(result.get_response()["outputs"]) == 5
    check_outputs(result, expected)


def test_infer_json_outputs(client, expected):
    image = triton.InferInput("image", [2], "BYTES").set_data_from_numpy(jpegs()[:2], binary_data=True)
    outputs = [triton.InferRequestedOutput(n, binary_data=False) for n in ("count", "confidence", "expected_count")]
    result = client.infer(expected["name"], [image], outputs=outputs, headers=auth())
    response = result.get_response()
    assert all("data" in o and "parameters" not in o for o in response["outputs"])
    assert response["outputs"][0]["data"] == [r["count"] for r in expected["results"][:2]]
    check_outputs(result, {**expected, "results": expected["results"][:2]}, ("count", "confidence", "expected_count"))


@pytest.mark.parametrize("binary", [True, False])
def test_infer_preprocessed_fp32(client, expected, binary):
    arrays = expected["arrays"] if binary else expected["arrays"][:1]
    images = triton.InferInput("images", list(arrays.shape), "FP32").set_data_from_numpy(arrays, binary_data=binary)
    result = client.infer(expected["name"], [images], outputs=[triton.InferRequestedOutput("count"), triton.InferRequestedOutput("label")],
                          headers=auth())
    check_outputs(result, {**expected, "results": expected["results"][:len(arrays)]}, ("count", "label"))


def test_plain_json_nested_lists_with_curl_like_request(server, expected):
    data = [[base64.b64encode(PHOTOS[0].read_bytes()).decode()], [base64.b64encode(PHOTOS[1].read_bytes()).decode()]]
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 1], "data": data}], "outputs": [{"name": "count"}]}
    r = httpx.post(f"{server.url}/v2/models/{expected['name']}/infer", json=body, headers=auth(), timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json" and HEADER.lower() not in r.headers
    assert r.json()["outputs"] == [{"name": "count", "datatype": "INT64", "shape": [2], "data": [x["count"] for x in expected["results"][:2]]}]
    assert httpx.post(f"{server.url}/v2/models/{expected['name']}/infer", json=body, timeout=10).status_code == 401  # the key guards it
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200  # health needs no key
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'bintally_inference_requests_total{code="200"' in metrics or ('code="200"' in metrics and "bintally_inference_requests_total" in metrics)


def binary_request(inputs: list[dict], raw: bytes, extra: dict | None = None) -> tuple[bytes, dict]:
    head = json.dumps({"inputs": inputs, **(extra or {})}).encode()
    return head + raw, {HEADER: str(len(head)), "Content-Type": "application/octet-stream"}


def _image_input(n, size, **kw):
    return [{"name": "image", "datatype": "BYTES", "shape": [n], "parameters": {"binary_data_size": size}, **kw}]


JPEG = PHOTOS[0].read_bytes()
ONE = serialize_bytes([JPEG])
B64 = base64.b64encode(JPEG).decode()
NAN = np.full([1, 3, 64, 64], np.nan, np.float32).tobytes()
BAD_CASES = {
    "not json": (b"{inputs", {"Content-Type": "application/json"}, 400, "not valid JSON"),
    "json list": (b"[1, 2]", {"Content-Type": "application/json"}, 400, "JSON object"),
    "no inputs": (b'{"inputs": []}', {}, 400, "non-empty list"),
    "two inputs": (json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [B64]}] * 2}).encode(), {}, 400,
                   "exactly one input"),
    "unknown input": (json.dumps({"inputs": [{"name": "x", "datatype": "BYTES", "shape": [1], "data": [B64]}]}).encode(), {}, 400,
                      "unknown input"),
    "wrong datatype": (json.dumps({"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}]}).encode(), {}, 400,
                       "datatype BYTES"),
    "shape mismatch": (json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [B64]}]}).encode(), {}, 400,
                       "holds 2 element"),
    "negative shape": (json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1], "data": [B64]}]}).encode(), {}, 400,
                       "shape"),
    "bad base64": (json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not*base64"]}]}).encode(), {},
                   400, "not valid base64"),
    "number as bytes": (json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [7]}]}).encode(), {}, 400,
                        "base64 string"),
    "not an image": (json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                                             "data": [base64.b64encode(b"hello").decode()]}]}).encode(), {}, 400, "image[0]"),
    "too many photos": (json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [MAX_IMAGES + 1],
                                                "data": [B64] * (MAX_IMAGES + 1)}]}).encode(), {}, 413, "limit"),
    "fp32 wrong shape": (json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 32, 32],
                                                 "data": [0.0] * 3072}]}).encode(), {}, 400, "[N, 3, 64, 64]"),
    "fp32 strings": (json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 64, 64],
                                             "data": ["a"] * 12288}]}).encode(), {}, 400, "must be numbers"),
    "unknown output": (json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [B64]}],
                                   "outputs": [{"name": "boxes"}]}).encode(), {}, 400, "unknown output"),
    "header past body": (b'{"inputs": []}', {HEADER: "999"}, 400, "only 14 bytes"),
    "header not a number": (b'{"inputs": []}', {HEADER: "12x"}, 400, "whole number"),
    "binary size past end": (*binary_request(_image_input(1, len(ONE) + 10), ONE), 400, "runs past the end"),
    "binary left over": (*binary_request(_image_input(1, len(ONE)), ONE + b"junk"), 400, "belong to no input"),
    "bytes element truncated": (*binary_request(_image_input(1, 8), struct.pack("<I", 100) + b"abcd"), 400, "claims 100 bytes"),
    "data and binary": (*binary_request(_image_input(1, len(ONE), data=[B64]), ONE), 400, "not both"),
    "fp32 binary short": (*binary_request([{"name": "images", "datatype": "FP32", "shape": [1, 3, 64, 64],
                                            "parameters": {"binary_data_size": 16}}], b"\0" * 16), 400, "needs 49152 bytes"),
    "fp32 nan": (*binary_request([{"name": "images", "datatype": "FP32", "shape": [1, 3, 64, 64],
                                   "parameters": {"binary_data_size": len(NAN)}}], NAN), 400, "finite"),
    "deeply nested json": (b"[" * 100_000, {}, 400, "nested too deeply"),
    "fp32 overflowing number": (b'{"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 64, 64], "data": [1'
                                + b"0" * 400 + b", 0" * 12287 + b"]}]}", {}, 400, "finite FP32"),
    "gzip garbage": (b"not gzip at all", {"Content-Encoding": "gzip", "Content-Type": "application/json"}, 400, "gzip"),
}


def test_malformed_requests_are_json_4xx(server, expected):
    url = f"{server.url}/v2/models/{expected['name']}/infer"
    failures = []
    with httpx.Client(headers=auth(), timeout=60) as http:
        for case, (body, headers, status, fragment) in BAD_CASES.items():
            r = http.post(url, content=body, headers={"Content-Type": "application/json", **headers})
            error = r.json().get("error", "") if r.headers.get("content-type", "").startswith("application/json") else None
            if r.status_code != status or not isinstance(error, str) or fragment not in error:
                failures.append(f"{case}: {r.status_code} {r.text[:200]}")
        for path, fragment in (("/v2/models/nope/infer", "unknown model"), (f"/v2/models/{expected['name']}/versions/9/infer", "unknown version")):
            r = http.post(server.url + path, content=json.dumps({"inputs": []}), headers={"Content-Type": "application/json"})
            if r.status_code != 404 or fragment not in r.json().get("error", ""):
                failures.append(f"{path}: {r.status_code} {r.text[:200]}")
        for path in ("/v2/models/nope", "/v2/models/nope/ready", f"/v2/models/{expected['name']}/versions/9/ready"):
            r = http.get(server.url + path)
            if r.status_code != 404 or "error" not in r.json():
                failures.append(f"GET {path}: {r.status_code} {r.text[:200]}")
        # after all that, the server still counts
        ok = http.post(url, json={"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [B64]}]})
    assert not failures, "\n".join(failures)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["data"] == [expected["results"][0]["count"]]
