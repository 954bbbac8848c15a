"""What `bintally serve` refuses, and how: every limit and allowlist against a real server over real HTTP.

Body over the limit (declared and streamed) -> 413; wrong content type -> 415; undecodable image and
decompression bomb -> 400; too many images -> 413; URIs outside the allowlists, file:// escapes by '..'
or symbolic link -> 403; API key missing or wrong -> 401. Allowlisted s3:// (a real local S3, moto)
and https:// (a real local TLS server) sources work.
"""

from __future__ import annotations

import base64
import datetime
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from bintally.serving.config import API_KEY_ENV, ServeConfig
from tests.helpers import png_bomb
from tests.serving_threads import BACKEND, JPEG, PHOTOS, assert_same, metric_value, metrics, reference_counts

LIMIT = 1_000_000
KEY = "s3cret-key-123"


@pytest.fixture(scope="module")
def reference(tiny_artifact) -> dict[str, dict]:
    return reference_counts(tiny_artifact)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """An allowed file root with two photos, a link to one of them, and links that lead out of it."""
    base = tmp_path_factory.mktemp("files")
    inside, outside = base / "root", base / "outside"
    (inside / "sub").mkdir(parents=True)
    outside.mkdir()
    (inside / "a.jpg").write_bytes(PHOTOS[0].read_bytes())
    (inside / "sub" / "b.jpg").write_bytes(PHOTOS[1].read_bytes())
    (outside / "secret.jpg").write_bytes(PHOTOS[2].read_bytes())
    (inside / "link-in.jpg").symlink_to(inside / "a.jpg")
    (inside / "link-out.jpg").symlink_to(outside / "secret.jpg")
    (inside / "dir-out").symlink_to(outside, target_is_directory=True)
    return inside


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    """A real HTTPS server on 127.0.0.1 ('localhost' in its certificate) serving photos, redirects and an oversized body."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = self_signed_certificate(folder)
    photo = PHOTOS[3].read_bytes()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            port = self.server.server_address[1]
            routes = {"/photo.jpg": (200, {}, photo),
                      "/same-host": (302, {"Location": "/photo.jpg"}, b""),
                      "/other-host": (302, {"Location": f"https://127.0.0.1:{port}/photo.jpg"}, b""),
                      "/big": (200, {}, b"\xff" * (LIMIT + 10))}
            if self.path == "/streamed-big":  # no Content-Length: the cap must hold while streaming
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for _ in range(12):
                    chunk = b"\xff" * 100_000
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.write(b"0\r\n\r\n")
                return
            status, headers, body = routes.get(self.path, (404, {}, b"missing"))
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"port": server.server_address[1], "cert": cert}
    server.shutdown()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture(scope="module")
def s3():
    from tests.s3_server import LocalS3

    local = LocalS3()
    local.client.create_bucket(Bucket="allowed-bucket")
    local.client.create_bucket(Bucket="other-bucket")
    for bucket in ("allowed-bucket", "other-bucket"):
        local.put(bucket, "bin-images/photo.jpg", PHOTOS[4].read_bytes())
    yield local
    local.stop()


@pytest.fixture(scope="module")
def server(serve_module, tiny_artifact, root, tls, s3):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ENDPOINT_URL", s3.url)
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
            mp.setenv(name, value)
        mp.setenv("SSL_CERT_FILE", str(tls["cert"]))
        config = ServeConfig(model=str(tiny_artifact.path), backend=BACKEND, threads=1, max_body_bytes=LIMIT, max_images=3,
                             file_root=str(root), allow_s3_buckets=("allowed-bucket",),
                             allow_https_hosts=("localhost", "169.254.169.254"))
        yield serve_module(config)


def count(server, body=None, **kw) -> httpx.Response:
    if body is not None:
        kw["json"] = body
    return httpx.post(server.url + "/v1/count", timeout=30, **kw)


def assert_refused(answer: httpx.Response, status: int, *fragments: str) -> str:
    assert answer.status_code == status, (answer.status_code, answer.text)
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    for fragment in fragments:
        assert fragment in error, (fragment, error)
    return error


# ------------------------------------------------------------------------------------------------ sizes and types
def test_body_over_the_limit_by_content_length_is_413(server):
    answer = count(server, content=b"\xff" * (LIMIT + 1), headers={"Content-Type": JPEG})
    assert_refused(answer, 413, "larger than the limit", f"{LIMIT:,}")


def test_body_over_the_limit_while_streaming_is_413(server):
    def chunks():  # chunked transfer: no Content-Length to check up front
        for _ in range(11):
            yield b"\xff" * 100_000

    assert_refused(count(server, content=chunks(), headers={"Content-Type": JPEG}), 413, "larger than the limit")
    small = PHOTOS[0].read_bytes()
    assert count(server, content=iter([small[:5000], small[5000:]]), headers={"Content-Type": JPEG}).status_code == 200
    assert metric_value(metrics(server.url), "bintally_inference_rejected_total", reason="too_large") >= 2


def test_wrong_content_type_is_415(server):
    photo = PHOTOS[0].read_bytes()
    for content_type in ("text/plain", "application/xml", "video/mp4"):
        assert_refused(count(server, content=photo, headers={"Content-Type": content_type}), 415, content_type, "image/jpeg")
    assert_refused(count(server, content=photo, headers={"Content-Type": ""}), 415, "Content-Type")


def test_undecodable_image_is_400_naming_the_problem(server):
    assert_refused(count(server, content=b"not a photo at all", headers={"Content-Type": JPEG}), 400, "not an image")
    truncated = PHOTOS[0].read_bytes()[:3000]
    assert_refused(count(server, content=truncated, headers={"Content-Type": JPEG}), 400, "corrupt")
    files = [("file", ("good.jpg", PHOTOS[0].read_bytes(), JPEG)), ("file", ("broken.jpg", b"\x89PNG junk", "image/png"))]
    assert_refused(count(server, files=files), 400, "broken.jpg", "not an image")
    items = {"images": [{"image_b64": base64.b64encode(PHOTOS[0].read_bytes()).decode()},
                        {"image_b64": base64.b64encode(b"garbage").decode()}]}
    assert_refused(count(server, items), 400, "image 2")


def test_malformed_json_is_400_on_every_endpoint(server):
    for path in ("/v1/count", "/invocations"):
        for body in (b"[" * 100_000, b"{", b"\xff\xfe", b'{"image_b64": 3}', b'{"images": "x"}', b"null"):
            response = httpx.post(server.url + path, content=body, headers={"Content-Type": "application/json"}, timeout=30)
            assert response.status_code == 400, (path, body[:20], response.status_code, response.text)
            assert response.json()["error"]


def test_decompression_bomb_is_refused_before_decoding(server):
    bomb = png_bomb(100_000, 100_000)
    assert len(bomb) < 100
    assert_refused(count(server, content=bomb, headers={"Content-Type": "image/png"}), 400, "too large", "100000x100000")
    assert_refused(count(server, {"image_b64": base64.b64encode(bomb).decode()}), 400, "too large")


def test_too_many_images_is_413(server):
    photo = PHOTOS[0].read_bytes()
    files = [("file", (f"{i}.jpg", photo, JPEG)) for i in range(4)]
    assert_refused(count(server, files=files), 413, "too many images", "3")
    b64 = {"image_b64": base64.b64encode(photo).decode()}
    assert_refused(count(server, {"images": [b64] * 4}), 413, "too many images")
    assert count(server, {"images": [b64] * 3}).status_code == 200
    assert count(server, files=files[:3]).status_code == 200


# ------------------------------------------------------------------------------------------------ URIs
@pytest.mark.parametrize("uri", [
    "s3://other-bucket/bin-images/photo.jpg",
    "https://example.com/photo.jpg",
    "http://localhost/photo.jpg",
    "http://169.254.169.254/latest/meta-data/",
    "https://169.254.169.254/latest/meta-data/",  # allowlisted by name, but link-local: never
    "https://user:pw@localhost/photo.jpg",
    "ftp://localhost/photo.jpg",
    "gopher://localhost:70/_x",
    "data:image/jpeg;base64,AAAA",
    "file:///etc/passwd",
    "file://otherhost/etc/passwd",
    "photo.jpg",
])
def test_uri_not_allowlisted_is_403(server, uri):
    assert_refused(count(server, {"uri": uri}), 403)


def test_file_escape_by_dots_or_symlink_is_403(server, root):
    for uri in (f"file://{root}/../outside/secret.jpg", f"file://{root}/sub/%2e%2e/%2e%2e/outside/secret.jpg",
                f"file://{root}/link-out.jpg", f"file://{root}/dir-out/secret.jpg", f"file://{root}/../../../../etc/passwd"):
        assert_refused(count(server, {"uri": uri}), 403, "file")
    for uri in (f"file://{root}/link-in.jpg", f"file://{root}/sub/b.jpg", (root / "a.jpg").as_uri()):
        assert count(server, {"uri": uri}).status_code == 200, uri


def test_allowlisted_s3_bucket_is_fetched(server, reference):
    answer = count(server, {"uri": "s3://allowed-bucket/bin-images/photo.jpg"})
    assert answer.status_code == 200, answer.text
    assert_same(answer.json()["results"][0], reference[PHOTOS[4].name])
    assert_refused(count(server, {"uri": "s3://allowed-bucket/bin-images/missing.jpg"}), 400, "no such object")
    invoked = httpx.post(server.url + "/invocations", json={"uri": "s3://allowed-bucket/bin-images/photo.jpg"})
    assert invoked.status_code == 200, invoked.text


def test_allowlisted_https_host_is_fetched_within_limits(server, tls, reference):
    base = f"https://localhost:{tls['port']}"
    for path in ("/photo.jpg", "/same-host"):
        answer = count(server, {"uri": base + path})
        assert answer.status_code == 200, answer.text
        assert_same(answer.json()["results"][0], reference[PHOTOS[3].name])
    assert_refused(count(server, {"uri": base + "/other-host"}), 403, "another host")
    assert_refused(count(server, {"uri": base + "/big"}), 413, "limit")
    assert_refused(count(server, {"uri": base + "/streamed-big"}), 413, "limit")
    assert_refused(count(server, {"uri": base + "/nothing-here"}), 400, "404")


# ------------------------------------------------------------------------------------------------ API key
@pytest.fixture(scope="module")
def keyed(serve_module, tiny_artifact):
    return serve_module(ServeConfig(model=str(tiny_artifact.path), backend=BACKEND, threads=1, api_key=KEY))


def test_api_key_guards_everything_but_health_metrics_and_the_page(keyed):
    photo = PHOTOS[0].read_bytes()
    for path in ("/v1/count", "/invocations"):
        missing = httpx.post(keyed.url + path, content=photo, headers={"Content-Type": JPEG})
        assert_refused(missing, 401, "missing API key")
        assert missing.headers["www-authenticate"].startswith("Bearer")
        for wrong in (f"Bearer {KEY}x", "Bearer", f"Basic {KEY}", KEY, f"Bearer {KEY[:-1]}"):
            assert_refused(httpx.post(keyed.url + path, content=photo, headers={"Content-Type": JPEG, "Authorization": wrong}),
                           401, "API key")
        good = httpx.post(keyed.url + path, content=photo, headers={"Content-Type": JPEG, "Authorization": f"Bearer {KEY}"})
        assert good.status_code == 200, good.text
    for path in ("/docs", "/openapi.json", "/v1/model", "/v2", f"/v2/models/{keyed.plane.name}"):
        assert httpx.get(keyed.url + path).status_code == 401, path
    assert httpx.get(keyed.url + "/v1/model", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    assert httpx.get(keyed.url + "/ping").status_code == 200
    assert httpx.get(keyed.url + "/metrics").status_code == 200
    for path in ("/v2/health/live", "/v2/health/ready", "/"):
        assert httpx.get(keyed.url + path).status_code != 401, path
    assert metric_value(metrics(keyed.url), "bintally_inference_rejected_total", reason="unauthorized") >= 12


def test_api_key_comes_from_the_file_or_the_environment(tmp_path, monkeypatch):
    from bintally.cli.serve import read_api_key

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    assert read_api_key(None) is None
    monkeypatch.setenv(API_KEY_ENV, " from-env ")
    assert read_api_key(None) == "from-env"
    (tmp_path / "key").write_text("from-file\n")
    assert read_api_key(tmp_path / "key") == "from-file"
