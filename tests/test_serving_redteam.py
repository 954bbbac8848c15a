"""Variants of issue 19 that its first fixes let through, against a real uvicorn server on loopback.

- Half a UTF-16 surrogate pair ("\\ud800" in JSON) in any text of a body was a 500 (UnicodeEncodeError in the
  database or the answer): now a 400 naming the field, from `text.check_text`, like a control character.
- JSON bodies are strict: a key given twice in one object (which value was meant?) and NaN/Infinity are 400.
- Run, task and snapshot ids in a path are ASCII digits: '1_0' named task 10, '+1', ' 1', '1.0' and '01' task 1.
- A header that means one thing (Host, Origin, Authorization, Content-Type, Sec-Fetch-Site, ...) or a query
  parameter given twice is 400: which copy counts is never guessed (the first Origin was the one checked).
- A file:// URI with a query or a fragment, which was quietly dropped, is 400.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest

from bintally.paths import SAMPLE_DIR
from tests.test_serving_hardening import JPEG, make_run, refused

EVIL = "http://evil.example"


@pytest.fixture(scope="module")
def server(serve_module, tiny_artifact, tmp_path_factory):
    """No API key, an audit store, the sample photos as the file root."""
    from bintally.serving.config import ServeConfig

    db = tmp_path_factory.mktemp("redteam") / "audit.db"
    return serve_module(ServeConfig(model=str(tiny_artifact.path), backend="torch", threads=1, audit_db=str(db), audit_auth="open",
                                    file_root=str(SAMPLE_DIR / "bin-images")).validate())


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, timeout=120) as c:
        yield c


@pytest.fixture
def task(client, request):
    """A task of a run of its own, with no count yet."""
    return make_run(client, f"redteam {request.node.name}")[0]


def counts_of(client: httpx.Client, task: dict) -> list:
    return client.get(f"/v1/tasks/{task['id']}/review").json()["counts"]


def raw_request(url: str, head: bytes, body: bytes = b"") -> tuple[int, dict]:
    """(status, JSON answer) of a request written byte by byte: httpx would not send a header twice as given."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as s:
        s.sendall(head + b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2] or b"null")


# ---------------------------------------------------------------- lone surrogates


def test_a_lone_surrogate_in_any_text_is_400_naming_the_field_not_500(server, client, task):
    model = client.get("/v1/model").json()["name"]
    cases = [
        (f"/v1/tasks/{task['id']}/counts", b'{"qty": 1, "by": "ann\\ud800"}', "by"),
        (f"/v1/tasks/{task['id']}/counts", b'{"qty": 1, "by": "ann", "comment": "\\udfff"}', "comment"),
        (f"/v1/tasks/{task['id']}/counts", b'{"qty": 1, "by": "ann", "lines": {"\\udc80": 1}}', "lines"),
        ("/v1/count", b'{"uri": "file:///tmp/\\ud800.jpg"}', "uri"),
        (f"/v2/models/{model}/infer", b'{"id": "\\ud83d", "inputs": []}', "id"),
    ]
    for path, body, field in cases:
        refused(client.post(path, content=body, headers={"Content-Type": "application/json"}), 400, field, "surrogate")
    assert counts_of(client, task) == []
    assert client.post(f"/v1/tasks/{task['id']}/counts", json={"qty": 1, "by": "ann 😀"}).status_code == 200  # a real pair is text


# ---------------------------------------------------------------- strict JSON


@pytest.mark.parametrize("body, words", [
    (b'{"qty": 3, "qty": 5, "by": "ann"}', ("'qty' is given twice",)),
    (b'{"qty": 3, "by": "ann", "by": "mallory"}', ("'by' is given twice",)),
    (b'{"qty": 3, "by": "ann", "lines": {"A": 1, "A": 2}}', ("'A' is given twice",)),
    (b'{"qty": NaN, "by": "ann"}', ("NaN is not a JSON number",)),
    (b'{"qty": 3, "by": "ann", "count_index": Infinity}', ("Infinity is not a JSON number",)),
    (b'{"qty": -Infinity, "by": "ann"}', ("-Infinity",)),
    (b'{"qty": 1' + b"0" * 5000 + b', "by": "ann"}', ("more than 4,300 digits",)),
])
def test_json_bodies_are_strict(client, task, body, words):
    error = refused(client.post(f"/v1/tasks/{task['id']}/counts", content=body, headers={"Content-Type": "application/json"}),
                    400, "not valid JSON", *words)
    assert "set_int_max_str_digits" not in error
    assert counts_of(client, task) == []


def test_strict_json_on_every_json_route(client, task):
    model = client.get("/v1/model").json()["name"]
    review = b'{"approve": true, "approve": false, "by": "rev"}'
    refused(client.post(f"/v1/tasks/{task['id']}/review", content=review, headers={"Content-Type": "application/json"}),
            400, "'approve' is given twice")
    refused(client.post("/v1/count", content=b'{"uri": "file:///a.jpg", "uri": "file:///b.jpg"}',
                        headers={"Content-Type": "application/json"}), 400, "'uri' is given twice")
    refused(client.post(f"/v2/models/{model}/infer", content=b'{"inputs": [], "parameters": {"x": NaN}}',
                        headers={"Content-Type": "application/json"}), 400, "NaN")
    records = b'{"bins": [{"bin_id": "b1", "bin_id": "b2", "image": "00450.jpg", "record_qty": 1}]}'
    runs_before = client.get("/v1/audit-runs").json()["runs"]
    refused(client.post("/v1/audit-runs", files=[("records", ("r.json", records, "application/json")),
                                                 ("photos", ("00450.jpg", JPEG, "image/jpeg"))]), 400, "r.json", "'bin_id' is given twice")
    assert client.get("/v1/audit-runs").json()["runs"] == runs_before


# ---------------------------------------------------------------- ids in paths


@pytest.mark.parametrize("spelling", ["{id}_0", "+{id}", "%20{id}", "{id}%20", "{id}.0", "0{id}", "9223372036854775808"])
def test_ids_in_paths_are_ascii_digits_as_written(client, task, spelling):
    written = spelling.format(id=task["id"])
    for method, path in [("GET", f"/v1/tasks/{written}"), ("GET", f"/v1/tasks/{written}/review"),
                         ("GET", f"/v1/audit-runs/{written}"), ("GET", f"/v1/audit-runs/{written}/tasks"),
                         ("GET", f"/v1/snapshots/{written}/image")]:
        refused(client.request(method, path), 400, "ASCII digits")
    refused(client.post(f"/v1/tasks/{written}/counts", json={"qty": 1, "by": "ann"}), 400, "task_id", "ASCII digits")
    assert counts_of(client, task) == []
    assert client.get(f"/v1/tasks/{task['id']}").status_code == 200
    assert client.get("/v1/tasks/9223372036854775807").status_code == 404


# ---------------------------------------------------------------- given twice


def test_a_header_or_query_parameter_given_twice_is_400(server, client, task):
    port = server.url.rsplit(":", 1)[1].encode()
    own = b"127.0.0.1:" + port
    body = b'{"qty": 1, "by": "mallory"}'
    start = b"POST /v1/tasks/%d/counts HTTP/1.1\r\n" % task["id"]
    json_type = b"Content-Type: application/json\r\n"
    heads = {
        "Host": start + b"Host: evil.example\r\nHost: " + own + b"\r\nOrigin: " + EVIL.encode() + b"\r\n" + json_type,
        "Origin": start + b"Host: " + own + b"\r\nOrigin: http://" + own + b"\r\nOrigin: " + EVIL.encode() + b"\r\n" + json_type,
        "Sec-Fetch-Site": start + b"Host: " + own + b"\r\nSec-Fetch-Site: same-origin\r\nSec-Fetch-Site: cross-site\r\n" + json_type,
        "Content-Type": start + b"Host: " + own + b"\r\n" + json_type + b"Content-Type: text/plain\r\n",
        "Authorization": start + b"Host: " + own + b"\r\nAuthorization: Bearer a\r\nAuthorization: Bearer b\r\n" + json_type,
    }
    for name, head in heads.items():
        status, answer = raw_request(server.url, head, body)
        assert status == 400 and answer["error"] == f"the header {name} is given more than once: give it once", (name, answer)
    assert counts_of(client, task) == []
    for query in ("status=requested&status=approved", "status=requested&%73tatus=approved"):
        refused(client.get(f"/v1/audit-runs/{task['run_id']}/tasks?{query}"), 400, "query parameter 'status'", "more than once")
    assert client.get(f"/v1/audit-runs/{task['run_id']}/tasks?status=requested").status_code == 200
    status, _ = raw_request(server.url, start + b"Host: " + own + b"\r\nOrigin: http://" + own + b"\r\n" + json_type, body)
    assert status == 200 and len(counts_of(client, task)) == 1  # once each, the same request is taken


# ---------------------------------------------------------------- file:// URIs


def test_a_file_uri_with_a_query_or_fragment_is_400(client):
    root = SAMPLE_DIR / "bin-images"
    for uri in (f"file://{root}/00450.jpg?x=1", f"file://{root}/00450.jpg#top", f"file://{root}/00450.jpg?"):
        refused(client.post("/v1/count", json={"uri": uri}), 400, "no query or fragment")
    answer = client.post("/v1/count", json={"uri": f"file://{root}/00450.jpg"})
    assert answer.status_code == 200, answer.text
