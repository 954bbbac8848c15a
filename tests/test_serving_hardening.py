"""The server against an attacker and against clients that misbehave (issue 19): real uvicorn servers on loopback.

- Forged cross-site requests: every state-changing route (audit runs, counts, reviews, inference) refuses a request
  whose Origin, Sec-Fetch-Site or Referer names another site (403, counted as "forbidden", one log line), and a
  text/plain or form-urlencoded body (415), with and without an API key; software that sends neither (httpx here,
  curl) and the server's own pages keep working; nothing is stored by a refused request.
- Security headers on every answer: a CSP without inline script on the pages (and no inline script left in them),
  nosniff, no referrer, no framing, no-store on the audit API.
- Control characters in any text of a body (JSON values and keys, form fields, file names, CSV lines, records JSON,
  the Idempotency-Key): 400 naming the field, before the database; on PostgreSQL too (never 503), and a value the
  database refuses is 400 while an unreachable database is 503.
- Clients that go away mid-upload leave no traceback in the server log, which still answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import threading
import time

import httpx
import pytest

from bintally.paths import SAMPLE_DIR
from tests.browser import headless_chromium, needs_chromium
from tests.helpers import snapshot_csv
from tests.servers import AUTH
from tests.serving_threads import metric_value

PHOTOS = ["00450.jpg", "00451.jpg", "00452.jpg"]
EVIL = "http://evil.example"
ALLOWED = "https://bins.example.com"  # the public address of a proxy in front (--allowed-origin)
JPEG = (SAMPLE_DIR / "bin-images" / "00450.jpg").read_bytes()
BOUNDARY = "b0undary"
CONTROL_CHARACTERS = ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\u2028"]


def run_upload(rows: list[tuple] | None = None, photo_name: str = "00450.jpg") -> list:
    rows = rows or [(f"bin-{name[:-4]}", name, 3) for name in PHOTOS]
    files = [("csv", ("snapshots.csv", snapshot_csv(rows).encode(), "text/csv"))]
    files += [("photos", (name, (SAMPLE_DIR / "bin-images" / name).read_bytes(), "image/jpeg")) for name in PHOTOS]
    return files


def make_run(client: httpx.Client, name: str) -> list[dict]:
    """A run over PHOTOS, every bin flagged; its tasks."""
    created = client.post("/v1/audit-runs", files=run_upload(), data={"name": name, "budget": "1", "control": "0"})
    assert created.status_code in (200, 201), created.text
    return client.get(f"/v1/audit-runs/{created.json()['id']}/tasks").json()["tasks"]


def refused(answer: httpx.Response, status: int, *words: str) -> str:
    assert answer.status_code == status, (answer.status_code, answer.text)
    assert answer.headers["content-type"] == "application/json"
    error = answer.json()["error"]
    assert "\n" not in error and "Traceback" not in error
    for word in words:
        assert word in error, (word, error)
    return error


@pytest.fixture(scope="module")
def open_server(serve_module, tiny_artifact, tmp_path_factory):
    """No API key (the case the issue found forgeable), an audit store, a proxy's public origin allowed."""
    from bintally.serving.config import ServeConfig

    db = tmp_path_factory.mktemp("hardening") / "audit.db"
    return serve_module(ServeConfig(model=str(tiny_artifact.path), backend="torch", threads=1, audit_db=str(db), audit_auth="open",
                                    allowed_origins=(ALLOWED,)).validate())


@pytest.fixture(scope="module")
def robot(open_server):
    with httpx.Client(base_url=open_server.url, timeout=120) as client:
        yield client


@pytest.fixture(scope="module")
def tasks(robot):
    return make_run(robot, "hardening")


# ---------------------------------------------------------------- forged cross-site requests


def forged_requests(tasks: list[dict]) -> list[tuple[str, str, dict]]:
    """(method, path, httpx keyword arguments) of each state-changing request the issue saw forged, and more."""
    task = tasks[0]["id"]
    count = json.dumps({"qty": 3, "by": "mallory"})
    review = json.dumps({"approve": True, "final": 9, "by": "mallory", "reason": "lost", "outcome": "record_wrong"})
    return [
        ("POST", f"/v1/tasks/{task}/counts", {"content": count, "headers": {"Content-Type": "text/plain"}}),
        ("POST", f"/v1/tasks/{task}/counts", {"content": count, "headers": {"Content-Type": "application/json"}}),
        ("POST", f"/v1/tasks/{task}/review", {"content": review, "headers": {"Content-Type": "text/plain;charset=UTF-8"}}),
        ("POST", f"/v1/tasks/{task}/review", {"data": {"approve": "true", "by": "mallory"}}),  # form-urlencoded
        ("POST", "/v1/audit-runs", {"files": run_upload(), "data": {"name": "forged", "budget": "1"}}),
        ("POST", "/v1/count", {"content": JPEG, "headers": {"Content-Type": "image/jpeg"}}),
        ("POST", "/v1/count", {"files": [("file", ("a.jpg", JPEG, "image/jpeg"))]}),
        ("POST", "/invocations", {"content": JPEG, "headers": {"Content-Type": "application/x-image"}}),
        ("POST", "/v2/models/anything/infer", {"content": b'{"inputs": []}', "headers": {"Content-Type": "application/json"}}),
        ("PUT", f"/v1/tasks/{task}/counts", {"content": count, "headers": {"Content-Type": "application/json"}}),
        ("DELETE", "/v1/audit-runs/1", {}),
    ]


# what a browser adds to a request that a page of another site makes it send
CROSS_SITE = {
    "other origin": {"Origin": EVIL},
    "other origin, fetch metadata": {"Origin": EVIL, "Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"},
    "opaque origin (sandboxed frame, data: URL)": {"Origin": "null"},
    "a sibling subdomain": {"Sec-Fetch-Site": "same-site", "Origin": "http://intranet.127.0.0.1.nip.io"},
    "fetch metadata only": {"Sec-Fetch-Site": "cross-site"},
    "same host, another port": {"Origin": "http://127.0.0.1:1"},
    "referer only": {"Referer": f"{EVIL}/page.html"},
    "origin with a path (malformed)": {"Origin": "http://127.0.0.1/x"},
}


@pytest.mark.parametrize("case", sorted(CROSS_SITE))
def test_forged_cross_site_requests_are_403_and_store_nothing(open_server, robot, tasks, case, caplog):
    runs_before = robot.get("/v1/audit-runs").json()["runs"]
    before = metric_value(robot.get("/metrics").text, "bintally_inference_rejected_total", reason="forbidden")
    caplog.set_level(logging.WARNING, logger="bintally.serving")
    requests = forged_requests(tasks)
    for method, path, kwargs in requests:
        headers = kwargs.get("headers", {}) | CROSS_SITE[case]
        answer = robot.request(method, path, **(kwargs | {"headers": headers}))
        refused(answer, 403, "refused", "another site")
    after = metric_value(robot.get("/metrics").text, "bintally_inference_rejected_total", reason="forbidden")
    assert after - before == len(requests)
    logged = [r.getMessage() for r in caplog.records if "refused a cross-site" in r.getMessage()]
    assert len(logged) == len(requests) and all("\n" not in line for line in logged)
    assert robot.get(f"/v1/tasks/{tasks[0]['id']}/review").json()["counts"] == []
    assert robot.get("/v1/audit-runs").json()["runs"] == runs_before


EVIL_PAGE = """<!doctype html><html><body>
<form id="plain" method="POST" enctype="text/plain" action="{server}/v1/tasks/{task}/counts">
<input name='{{"qty": 9, "by": "mallory", "x": "' value='"}}'></form>
<script>
const body = new FormData();
body.append("csv", new Blob(["bin_id,image,record_qty\\nb,https://x/a.jpg,1\\n"]), "s.csv");
Promise.allSettled([
  fetch("{server}/v1/tasks/{task}/review", {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
        body: JSON.stringify({{approve: true, final: 9, by: "mallory", reason: "lost", outcome: "record_wrong"}})}}),
  fetch("{server}/v1/audit-runs", {{method: "POST", mode: "no-cors", body: body}}),
  fetch("{server}/v1/count", {{method: "POST", mode: "no-cors", body: new Blob(["x"], {{type: "image/jpeg"}})}}),
]).then(() => document.getElementById("plain").submit());
</script></body></html>"""


@needs_chromium
def test_a_page_of_another_site_cannot_make_chromium_count_review_or_upload(open_server, robot, tasks, tmp_path):
    """The issue's attack in a real browser: a page on another origin posts a text/plain form and no-cors fetches."""
    import functools
    import http.server

    from selenium.webdriver.support.ui import WebDriverWait

    task = tasks[0]["id"]
    (tmp_path / "evil.html").write_text(EVIL_PAGE.format(server=open_server.url, task=task))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    evil = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=evil.serve_forever, daemon=True).start()
    runs_before = robot.get("/v1/audit-runs").json()["runs"]
    before = metric_value(robot.get("/metrics").text, "bintally_inference_rejected_total", reason="forbidden")
    try:
        with headless_chromium() as driver:
            driver.get(f"http://127.0.0.1:{evil.server_address[1]}/evil.html")
            WebDriverWait(driver, 60).until(lambda d: metric_value(robot.get("/metrics").text, "bintally_inference_rejected_total",
                                                                    reason="forbidden") - before >= 4)
            WebDriverWait(driver, 30).until(lambda d: "refused" in d.page_source)  # where the form's submission landed
    finally:
        evil.shutdown()
    assert robot.get(f"/v1/tasks/{task}/review").json()["counts"] == []
    assert robot.get("/v1/audit-runs").json()["runs"] == runs_before


def test_forged_requests_are_refused_with_an_api_key_too(audit_server):
    """Even with the key (a page cannot have it, but the check must not depend on that), and without it."""
    with httpx.Client(base_url=audit_server.url, timeout=60) as client:
        for headers in (AUTH | {"Origin": EVIL}, {"Origin": EVIL}, AUTH | {"Sec-Fetch-Site": "cross-site"}):
            refused(client.post("/v1/tasks/1/counts", json={"qty": 1, "by": "m"}, headers=headers), 403, "another site")
            refused(client.post("/v1/count", content=JPEG, headers=headers | {"Content-Type": "image/jpeg"}), 403)
        refused(client.post("/v1/tasks/1/counts", content=b'{"qty": 1, "by": "m"}', headers=AUTH | {"Content-Type": "text/plain"}),
                415, "text/plain", "application/json")
        good = client.post("/v1/count", content=JPEG, headers=AUTH | {"Content-Type": "image/jpeg", "Origin": audit_server.url})
        assert good.status_code == 200, good.text


def test_bodies_any_page_can_send_are_415_even_without_origin(robot, tasks):
    """text/plain and form-urlencoded: what a page of another site sends without asking, from a browser that might
    not say Origin; no route takes them. JSON routes take application/json only."""
    task = tasks[1]["id"]
    body = json.dumps({"qty": 2, "by": "ann"})
    for content_type in ("text/plain", "text/plain; charset=utf-8", "application/x-www-form-urlencoded", "TEXT/PLAIN"):
        refused(robot.post(f"/v1/tasks/{task}/counts", content=body, headers={"Content-Type": content_type}), 415, "application/json")
    refused(robot.post(f"/v1/tasks/{task}/counts", content=body), 415, "application/json")  # no Content-Type at all
    refused(robot.post(f"/v1/tasks/{task}/counts", content=body, headers={"Content-Type": "application/xml"}), 415)
    assert robot.get(f"/v1/tasks/{task}/review").json()["counts"] == []


def test_robots_and_the_servers_own_pages_keep_working(open_server, robot, tasks):
    """No Origin (curl, requests, httpx, tritonclient), the server's own origin, the allowed origin, fetch metadata
    of a same-origin request or of the user's own action: all accepted, on every body type the routes take."""
    own = {"Origin": open_server.url, "Sec-Fetch-Site": "same-origin", "Sec-Fetch-Mode": "cors"}
    for headers in ({}, own, {"Origin": ALLOWED}, {"Origin": ALLOWED, "Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "none"},
                    {"Origin": open_server.url.upper()},
                    {"Referer": open_server.url + "/audit"}):
        raw = robot.post("/v1/count", content=JPEG, headers=headers | {"Content-Type": "image/jpeg"})
        assert raw.status_code == 200, (headers, raw.text)
        form = robot.post("/v1/count", files=[("file", ("a.jpg", JPEG, "image/jpeg"))], headers=headers)
        assert form.status_code == 200, (headers, form.text)
    first = robot.post(f"/v1/tasks/{tasks[2]['id']}/counts", json={"qty": tasks[2]["record_qty"], "by": "ann"}, headers=own)
    assert first.status_code == 200, first.text
    again = make_run(robot, "hardening")  # multipart, no Origin: the same run, found again
    assert [t["id"] for t in again] == [t["id"] for t in tasks]
    v2 = robot.post("/v2/models/no-such-model/infer", content=b'{"inputs": []}')  # tritonclient sends no Content-Type
    assert v2.status_code == 404, v2.text


def test_allowed_origins_are_checked_when_the_server_starts(tiny_artifact):
    from bintally.errors import ConfigError
    from bintally.serving.config import ServeConfig

    config = ServeConfig(model=str(tiny_artifact.path), allowed_origins=("HTTPS://Bins.Example.com", "http://a.example:8080/"))
    assert config.validate().allowed_origins == ("https://bins.example.com:443", "http://a.example:8080")
    for bad in ("bins.example.com", "ftp://bins.example.com", "https://bins.example.com/audit", "null", "https://"):
        with pytest.raises(ConfigError, match="--allowed-origin"):
            ServeConfig(model=str(tiny_artifact.path), allowed_origins=(bad,)).validate()


# ---------------------------------------------------------------- response headers


def csp(answer: httpx.Response) -> dict[str, str]:
    policy = answer.headers["content-security-policy"]
    return {d.split()[0]: d.strip() for d in policy.split(";") if d.strip()}


def assert_secured(answer: httpx.Response) -> None:
    assert answer.headers["x-content-type-options"] == "nosniff", answer.url
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["x-frame-options"] == "DENY"
    assert csp(answer)["frame-ancestors"] == "frame-ancestors 'none'"


def test_every_answer_carries_the_security_headers(open_server, robot, tasks):
    task = tasks[0]
    answers = [robot.get("/"), robot.get("/audit"), robot.get("/v1/audit-runs"), robot.get(f"/v1/tasks/{task['id']}"),
               robot.get(task["image_url"]), robot.get("/v1/labels/export"), robot.get("/metrics"), robot.get("/ping"),
               robot.get("/samples"), robot.get("/samples/00450.jpg"), robot.get("/no/such/route"), robot.get("/openapi.json"),
               robot.post("/v1/count", content=b"x" * 10, headers={"Content-Type": "image/jpeg"}),
               robot.post("/v1/count", content=JPEG, headers={"Content-Type": "image/jpeg", "Origin": EVIL}),
               robot.get("/static/audit.js"), robot.get("/docs")]
    for answer in answers:
        assert_secured(answer)
    for page in answers[:2]:
        policy = csp(page)
        assert policy["script-src"] == "script-src 'self'" and "unsafe" not in page.headers["content-security-policy"]
        assert policy["object-src"] == "object-src 'none'"
    for api in answers[2:6]:
        assert api.headers["cache-control"] == "no-store", api.url
        assert csp(api)["default-src"] == "default-src 'none'"
    docs = csp(answers[-1])  # Swagger UI: FastAPI's own inline start-up and its CDN (decided: relaxed on /docs only)
    assert "https://cdn.jsdelivr.net" in docs["script-src"] and docs["frame-ancestors"] == "frame-ancestors 'none'"


def test_the_pages_have_no_inline_script_and_serve_their_own_files(robot):
    for path in ("/", "/audit"):
        page = robot.get(path).text
        scripts = re.findall(r"<script\b([^>]*)>(.*?)</script>", page, re.S | re.I)
        assert scripts, path
        for attributes, body in scripts:
            assert 'type="application/json"' in attributes or ("src=" in attributes and not body.strip()), (path, attributes)
        assert not re.search(r"\son[a-z]+\s*=", page, re.I), path  # no inline event handlers
        assert not re.search(r"\sstyle\s*=", page, re.I) and "<style" not in page, path
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', page):
            answer = robot.get(asset)
            assert answer.status_code == 200 and answer.headers["content-type"].split(";")[0] in ("text/javascript", "text/css")
    for name in ("../web.py", "..%2Fweb.py", "nope.js", "index.html"):
        assert robot.get(f"/static/{name}").status_code == 404, name


@needs_chromium
def test_the_pages_run_under_their_policy_in_chromium(open_server, tasks):
    """No Content-Security-Policy violation in the console while the pages load and the dashboard shows a task."""
    from selenium.webdriver.support.ui import WebDriverWait

    with headless_chromium() as driver:
        for path, ready in (("/", lambda d: d.find_element("tag name", "body").get_attribute("data-samples")),
                            (f"/audit#/tasks/{tasks[0]['id']}/review", lambda d: d.find_elements("id", "review-record"))):
            driver.get(open_server.url + path)
            WebDriverWait(driver, 60).until(ready)
            problems = [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]
            assert not problems, problems


# ---------------------------------------------------------------- control characters in bodies


def raw_form(parts: list[tuple[str, str, bytes]]) -> dict:
    """httpx arguments of a multipart body built by hand: names and file names as given (httpx would escape them)."""
    body = b"".join(b"--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n\r\n%s\r\n"
                    % (BOUNDARY.encode(), name.encode(), filename.encode(), data) for name, filename, data in parts)
    return {"content": body + b"--%s--\r\n" % BOUNDARY.encode(), "headers": {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}}


def bad_bodies(task: dict, model: str) -> list[tuple[str, dict, str]]:
    """(path, httpx arguments, the field the refusal must name) for a control character in each kind of text field."""
    count, review = f"/v1/tasks/{task['id']}/counts", f"/v1/tasks/{task['id']}/review"
    return [
        (count, {"json": {"qty": 1, "by": "ann\x00"}}, "by"),
        (count, {"json": {"qty": 1, "by": "ann", "comment": "two\x00hidden"}}, "comment"),
        (count, {"json": {"lines": {"SKU\x1b[2J": 1}, "by": "ann"}}, "lines['SKU\\x1b[2J'] (a key)"),
        (count, {"json": {"qty": 1, "by": "ann"}, "headers": {"Idempotency-Key": b"key\x85"}}, "Idempotency-Key"),  # obs-text: the HTTP parser passes it
        (review, {"json": {"approve": False, "by": "rita", "comment": "see\u2028below"}}, "comment"),
        (review, {"json": {"approve": True, "final": 1, "by": "ri\nta"}}, "by"),
        (review, {"json": {"approve": True, "final": 1, "by": "rita", "reason": "lost\x85"}}, "reason"),
        ("/v1/audit-runs", {"files": run_upload(), "data": {"name": "run\x00name"}}, "form field 'name'"),
        ("/v1/audit-runs", {"files": run_upload(), "data": {"created_by": "ann\r"}}, "form field 'created_by'"),
        ("/v1/audit-runs", {"files": run_upload([("bin\x00-1", "00450.jpg", 3)])}, "snapshots.csv line 2"),
        ("/v1/audit-runs", {"files": run_upload([("bin-1", "00450.jpg\x0b", 3)])}, "snapshots.csv line 2"),
        ("/v1/audit-runs", {"files": [("records", ("r.json", json.dumps({"bins": [{"bin_id": "a\nb", "image": "00450.jpg",
                                                                              "record_qty": 1}]}).encode(), "application/json")),
                                      ("photos", ("00450.jpg", JPEG, "image/jpeg"))]}, "r.json: bins[0].bin_id"),
        ("/v1/audit-runs", raw_form([("csv", "s.csv", snapshot_csv([("b", "x\x00.jpg", 1)]).encode()), ("photos", "x\x00.jpg", JPEG)]),
         "the file name of form field 'photos'"),
        ("/v1/count", {"json": {"uri": "file:///tmp/a\x00.jpg"}}, "uri"),
        ("/v1/count", raw_form([("file", "a\x1b.jpg", JPEG)]), "the file name of form field 'file'"),
        ("/v1/count", raw_form([("fi\x00le", "a.jpg", JPEG)]), "a form field name"),
        (f"/v2/models/{model}/infer", {"json": {"id": "req\x00", "inputs": []}}, "id: contains"),
    ]


def test_control_characters_in_any_text_field_are_400_naming_it(open_server, robot, tasks):
    task = tasks[1]
    runs_before = robot.get("/v1/audit-runs").json()["runs"]
    for path, kwargs, field in bad_bodies(task, robot.get("/v1/model").json()["name"]):
        error = refused(robot.post(path, **kwargs), 400, field, "control character")
        assert "\x00" not in error
    assert robot.get(f"/v1/tasks/{task['id']}/review").json()["counts"] == []
    assert robot.get("/v1/audit-runs").json()["runs"] == runs_before
    # a comment may span lines; every control character is refused in it all the same
    for character in CONTROL_CHARACTERS:
        refused(robot.post(f"/v1/tasks/{task['id']}/counts", json={"qty": 1, "by": "ann", "comment": f"a{character}b"}), 400, "comment")
    ok = robot.post(f"/v1/tasks/{task['id']}/counts", json={"qty": task["record_qty"], "by": "ann", "comment": "line one\n\tline two\r\n"})
    assert ok.status_code == 200, ok.text
    assert robot.get(f"/v1/tasks/{task['id']}/review").json()["counts"][0]["comment"] == "line one\n\tline two\r\n"


@pytest.fixture
def pg_server(serve, tiny_artifact, fresh_pg_db):
    from bintally.serving.config import ServeConfig

    return serve(ServeConfig(model=str(tiny_artifact.path), backend="torch", threads=1, audit_db=fresh_pg_db, audit_auth="open").validate())


def test_nul_bytes_on_postgresql_are_400_never_503(pg_server):
    with httpx.Client(base_url=pg_server.url, timeout=120) as client:
        task = make_run(client, "pg-hardening")[0]
        answers = [client.post("/v1/audit-runs", files=run_upload(), data={"name": "week\x00-48", "budget": "1"}),
                   client.post(f"/v1/tasks/{task['id']}/counts", json={"qty": 1, "by": "ann", "comment": "hidden\x00behind"}),
                   client.post("/v1/audit-runs", files=run_upload([("A-01\x00-03", "00450.jpg", 3)])),
                   client.post(f"/v1/tasks/{task['id']}/review", json={"approve": False, "by": "ri\x00ta"}),
                   client.get(f"/v1/audit-runs/{task['run_id']}/tasks", params={"status": "open\x00"})]
        for answer in answers:
            refused(answer, 400)
        assert client.get(f"/v1/tasks/{task['id']}/review").json()["counts"] == []
        assert [r["name"] for r in client.get("/v1/audit-runs").json()["runs"]] == ["pg-hardening"]


def test_a_value_the_database_refuses_is_400_and_only_an_unreachable_one_503(fresh_pg_db, tiny_artifact):
    """Underneath the edge's checks: the store's own errors from a real PostgreSQL, as the audit API maps them."""
    from sqlalchemy import make_url, text

    from bintally.audit.store import Store
    from bintally.serving.audit_api import AuditService
    from bintally.serving.config import ServeConfig
    from bintally.serving.dataplane import DataPlane
    from bintally.serving.errors import RequestError
    from tests.helpers import free_port

    def answer(url: str, sql: str, **params) -> RequestError:
        config = ServeConfig(model=str(tiny_artifact.path), audit_db=url)
        service = AuditService(config, DataPlane(config), Store(url))

        def run(store):
            with store.session() as session:
                session.execute(text(sql), params)

        try:
            with pytest.raises(RequestError) as refusal:
                asyncio.run(service.call(run))
        finally:
            service.close()
        return refusal.value

    refusals = [answer(fresh_pg_db, "SELECT CAST(:v AS text)", v="hidden\x00behind"),  # what psycopg refuses to send
                answer(fresh_pg_db, "SELECT CAST('three' AS integer)"), answer(fresh_pg_db, "SELECT CAST(99999999999 AS integer)"),
                answer(fresh_pg_db, "SELECT 1 / 0")]
    for refusal in refusals:
        assert refusal.status == 400 and "Retry-After" not in refusal.headers and "\n" not in refusal.message, refusal.message
        assert "cannot store a value" in refusal.message
    assert "NUL" in refusals[0].message
    unreachable = make_url(fresh_pg_db).set(host="127.0.0.1", port=free_port()).render_as_string(hide_password=False)
    gone = answer(unreachable, "SELECT 1")
    assert gone.status == 503 and gone.headers.get("Retry-After") == "1" and "retry" in gone.message, gone.message


# ---------------------------------------------------------------- clients that go away


PART = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"photos\"; filename=\"a.jpg\"\r\n"
        "Content-Type: image/jpeg\r\n\r\n").encode()


def half_upload(url: str, path: str, content_type: str, start: bytes, reset: bool) -> None:
    """Headers saying 100,000 bytes, 20,000 of them, then the connection closed (with a reset when `reset`)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall((f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {content_type}\r\n"
                      "Content-Length: 100000\r\n\r\n").encode() + (start + JPEG)[:20_000])
        time.sleep(0.5)
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


def test_clients_that_go_away_mid_upload_leave_no_traceback(serve_process, tiny_artifact, tmp_path):
    server = serve_process(tiny_artifact.path, "--audit-db", tmp_path / "audit.db", backend="torch")
    log: list[str] = []  # drained as it comes: a full pipe would stall the server
    drain = threading.Thread(target=lambda: log.extend(server.process.stdout), daemon=True)
    drain.start()
    model = httpx.get(server.url + "/v1/model", timeout=10).json()["name"]
    uploads = [("/v1/count", "image/jpeg", b""), ("/invocations", "application/x-image", b""),
               ("/v1/audit-runs", f"multipart/form-data; boundary={BOUNDARY}", PART),
               ("/v1/count", f"multipart/form-data; boundary={BOUNDARY}", PART),
               ("/v1/tasks/1/counts", "application/json", b'{"by": "ann", "comment": "'),
               (f"/v2/models/{model}/infer", "application/json", b'{"inputs": [{"name": "image", "data": ["')]
    threads = [threading.Thread(target=half_upload, args=(server.url, *uploads[i % len(uploads)], i % 2 == 1)) for i in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    time.sleep(1.0)
    assert httpx.get(server.url + "/ping", timeout=10).status_code == 200
    assert httpx.post(server.url + "/v1/count", content=JPEG, headers={"Content-Type": "image/jpeg"}, timeout=60).status_code == 200
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(60)
    drain.join(10)
    output = "".join(log)
    assert "Traceback" not in output and "Exception in ASGI application" not in output, output[-4000:]
    went_away = [line for line in output.splitlines() if "went away" in line]
    assert len(went_away) <= 20, went_away
