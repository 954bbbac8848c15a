"""Dashboard sessions and roles: log in with a user's token, an HttpOnly SameSite=Strict cookie with a CSRF token, logout,
throttled guessing; then, in headless Chromium, a counter counts blind and cannot review (not even by crafting the
request from the page's console), a reviewer approves, a logged-out page gets 401, and a cross-site form is refused.

The server runs with --audit-auth users and no API key, so only the users' tokens and sessions guard the audit routes.
"""

from __future__ import annotations

import http.server
import logging
import threading

import httpx
import pytest

from tests.browser import headless_chromium, needs_chromium
from tests.helpers import free_port
from tests.serving_threads import sample_photo
from tests.test_audit_http import run_files, snapshot_csv

PHOTOS = ["00610.jpg", "00611.jpg", "00612.jpg"]
WRONG_RECORD = 857  # the record of every bin: a number the counter's pages must never show
CSRF = "X-CSRF-Token"


@pytest.fixture(scope="module")
def users_config(tiny_artifact, tmp_path_factory):
    from bintally.paths import SAMPLE_DIR
    from bintally.serving.config import ServeConfig

    db = tmp_path_factory.mktemp("roles-db") / "audit.db"
    return ServeConfig(model=str(tiny_artifact.path), backend="torch", threads=1, audit_db=str(db), audit_auth="users",
                       file_root=str(SAMPLE_DIR / "bin-images")).validate()


@pytest.fixture(scope="module")
def tokens(users_config) -> dict[str, str]:
    """One user per role (and carl2, a second counter), their tokens by name."""
    from bintally.audit import open_store, people

    store = open_store(users_config.audit_db)
    try:
        owner = people.local_owner("owner")
        return {name: people.add_user(store, name, roles, owner) for name, roles in
                (("carl", ["counter"]), ("carl2", ["counter"]), ("rita", ["reviewer"]), ("ada", ["auditor"]), ("adam", ["admin"]))}
    finally:
        store.close()


@pytest.fixture(scope="module")
def server(serve_module, users_config, tokens):
    return serve_module(users_config)


@pytest.fixture(scope="module")
def run_tasks(server, tokens) -> list[dict]:
    """A run over three sample photos whose records all say 857, created by the auditor; its tasks (reviewer view)."""
    rows = [(f"BIN-{'ABC'[i]}", name, WRONG_RECORD) for i, name in enumerate(PHOTOS)]
    with httpx.Client(base_url=server.url, timeout=120) as client:
        created = client.post("/v1/audit-runs", files=run_files(snapshot_csv(rows), PHOTOS), headers=bearer(tokens["ada"]),
                              data={"name": "roles-run", "budget": "1", "control": "0", "tolerance": "1000"})
        assert created.status_code == 201, created.text
        listed = client.get(f"/v1/audit-runs/{created.json()['id']}/tasks", headers=bearer(tokens["rita"]))
        assert listed.status_code == 200, listed.text
        return sorted(listed.json()["tasks"], key=lambda t: t["bin_id"])


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def login(client: httpx.Client, token: str) -> httpx.Response:
    return client.post("/v1/session", json={"token": token})


# ---------------------------------------------------------------- the session routes over HTTP


def test_login_gives_a_strict_httponly_cookie_and_a_csrf_token_and_logout_ends_it(server, tokens, caplog):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        answer = login(client, tokens["carl"])
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["user"] == "carl" and body["roles"] == ["counter"] and len(body["csrf"]) >= 40
        cookie = answer.headers["set-cookie"]
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "path", "max-age"} <= attributes and "samesite=strict" in cookie.lower()
        assert "secure" not in attributes  # plain http on loopback; https adds it
        assert "max-age=43200" in cookie.lower() and tokens["carl"] not in cookie
        assert answer.headers["cache-control"] == "no-store"

        again = client.get("/v1/session")
        assert again.status_code == 200 and again.json() == body  # a reload gets the same session and CSRF token

        no_csrf = client.delete("/v1/session")
        assert no_csrf.status_code == 403 and CSRF in no_csrf.json()["error"]
        assert client.get("/v1/session").status_code == 200  # still logged in
        out = client.delete("/v1/session", headers={CSRF: body["csrf"]})
        assert out.status_code == 204
        assert "max-age=0" in out.headers["set-cookie"].lower() or "expires=" in out.headers["set-cookie"].lower()
        ended = client.get("/v1/session")
        assert ended.status_code == 401 and "error" in ended.json()

    with httpx.Client(base_url=server.url, timeout=60) as client:  # the old cookie, kept by an attacker, is dead too
        client.cookies.set("bintally_session", answer.cookies["bintally_session"])
        assert client.get("/v1/session").status_code == 401

    with httpx.Client(base_url=server.url, timeout=60) as client:  # the token in an Authorization header logs in too
        assert client.post("/v1/session", headers=bearer(tokens["rita"])).json()["roles"] == ["reviewer"]

    wrong = tokens["carl"][:-4] + "AAAA"
    with caplog.at_level(logging.WARNING, logger="bintally.serving"):
        refused = httpx.post(server.url + "/v1/session", json={"token": wrong}, timeout=60)
    assert refused.status_code == 401 and "set-cookie" not in refused.headers
    assert wrong not in refused.text and wrong[20:] not in caplog.text
    assert "refused a dashboard login from 127.0.0.1" in caplog.text


@pytest.mark.parametrize("content, kind, status, words", [
    (b'{"token": 5}', "application/json", 400, "token must be text"),
    (b'{"token": "btk_x", "user": "rita"}', "application/json", 400, "unknown field"),
    (b'["btk_x"]', "application/json", 400, "JSON object"),
    (b"token=btk_x", "application/x-www-form-urlencoded", 415, "Content-Type"),
    (b"", "application/json", 401, "no token"),
    (b'{"token": "btk_0123456789abcdef_' + b"A" * 43 + b'"}', "application/json", 401, "not valid"),
    (b'{"token": "btk_\\u0000"}', "application/json", 400, "control character"),
])
def test_bad_logins_get_one_clear_refusal(server, tokens, content, kind, status, words):
    answer = httpx.post(server.url + "/v1/session", content=content, headers={"Content-Type": kind}, timeout=60)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"] and "Traceback" not in answer.text


def test_a_rotated_token_or_a_disabled_user_ends_the_session(server, users_config, tokens):
    from bintally.audit import open_store, people

    store = open_store(users_config.audit_db)
    admin = people.local_owner("owner")
    try:
        new = people.add_user(store, "temp", ["counter"], admin)
        with httpx.Client(base_url=server.url, timeout=60) as client:
            assert login(client, new).status_code == 200
            newer = people.rotate_token(store, "temp", admin)
            assert client.get("/v1/session").status_code == 401
            assert login(client, new).status_code == 401  # the old token is dead
            assert login(client, newer).status_code == 200
            people.disable_user(store, "temp", admin)
            assert client.get("/v1/session").status_code == 401
            assert login(client, newer).status_code == 401
    finally:
        store.close()


def test_a_cross_site_request_with_the_cookie_is_refused(server, tokens):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        csrf = login(client, tokens["carl"]).json()["csrf"]
        forged = client.delete("/v1/session", headers={CSRF: csrf, "Origin": "http://evil.example"})
        assert forged.status_code == 403 and "Origin" in forged.json()["error"]
        assert client.get("/v1/session").status_code == 200  # the session lives on
        forged_login = httpx.post(server.url + "/v1/session", json={"token": tokens["rita"]},
                                  headers={"Origin": "http://evil.example"}, timeout=60)
        assert forged_login.status_code == 403 and "set-cookie" not in forged_login.headers


def test_failed_logins_are_throttled_per_address(serve, users_config, tokens):
    server = serve(users_config, load=False)
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for _ in range(10):
            assert login(client, "btk_guess").status_code == 401
        blocked = login(client, tokens["carl"])  # even the right token, while the address is blocked
        assert blocked.status_code == 429 and int(blocked.headers["retry-after"]) >= 1
        assert "set-cookie" not in blocked.headers


def test_the_counters_task_list_is_blind(server, tokens, run_tasks):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        assert client.get("/v1/tasks").status_code == 401
        login(client, tokens["carl"])
        answer = client.get("/v1/tasks")
        assert answer.status_code == 200
        tasks = answer.json()["tasks"]
        assert sorted(t["bin_id"] for t in tasks) == ["BIN-A", "BIN-B", "BIN-C"]
        assert set(tasks[0]) == {"id", "run_id", "bin_id", "snapshot_id", "status", "assignee", "count_index", "accepts_count", "lines", "image_url"}
        assert str(WRONG_RECORD) not in answer.text
    with httpx.Client(base_url=server.url, timeout=60) as client:
        login(client, tokens["rita"])
        refused = client.get("/v1/tasks")
        assert refused.status_code == 403 and "counter" in refused.json()["error"]


# ---------------------------------------------------------------- the dashboard in Chromium


EVERYTHING_SHOWN = """
const out = [];
for (const node of document.querySelectorAll("body *")) for (const a of node.attributes) if (a.name !== "src") out.push(a.value);
return document.documentElement.outerHTML.replace(/src="[^"]*"/g, "") + "\\n" + document.body.innerText + "\\n" + out.join("\\n");
"""

FETCH = """
const [method, path, body, done] = [arguments[0], arguments[1], arguments[2], arguments[arguments.length - 1]];
const who = await fetch("/v1/session");
const csrf = who.ok ? (await who.json()).csrf : "";
const headers = {"Content-Type": "application/json", "X-CSRF-Token": csrf || ""};
const r = await fetch(path, {method, headers, body: body === null ? undefined : JSON.stringify(body)});
done({status: r.status, text: await r.text()});
"""


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(1400) as driver:
        yield driver


def wait(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(condition)


def wait_ready(driver, view: str, ident="") -> None:
    wait(driver, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == f"{view}:{ident}")


def page_fetch(driver, method: str, path: str, body=None) -> dict:
    """fetch() from the page's own JavaScript (the console), with its cookie and the session's CSRF token."""
    return driver.execute_async_script("(async () => {" + FETCH + "})()", method, path, body)


def log_in(driver, server, token: str, view: str) -> None:
    driver.delete_all_cookies()
    driver.get(server.url + "/audit")
    wait_ready(driver, "login")
    assert driver.find_element("id", "login-token").get_attribute("type") == "password"
    assert driver.find_element("id", "login-token").get_attribute("autocomplete") == "off"
    driver.find_element("id", "login-token").send_keys(token)
    driver.find_element("id", "login-submit").click()
    wait_ready(driver, view)


def log_out(driver) -> None:
    driver.find_element("id", "logout").click()
    wait_ready(driver, "login")


@needs_chromium
def test_the_page_holds_no_data_before_login(server, browser, run_tasks):
    browser.delete_all_cookies()
    browser.get(server.url + "/audit")
    wait_ready(browser, "login")
    shown = browser.execute_script(EVERYTHING_SHOWN)
    for secret in ("BIN-A", str(WRONG_RECORD), "roles-run"):
        assert secret not in shown
    assert browser.find_element("id", "nav-runs").get_attribute("hidden") is not None
    wrong = "btk_0123456789abcdef_" + "B" * 43
    browser.find_element("id", "login-token").send_keys(wrong)
    browser.find_element("id", "login-submit").click()
    wait(browser, lambda d: d.find_element("id", "error").text)
    assert "not valid" in browser.find_element("id", "error").text
    assert browser.find_element("id", "login-token").get_attribute("value") == ""  # the token is not kept in the page
    assert not browser.get_cookies()


@needs_chromium
def test_a_counter_counts_blind_and_cannot_review(server, browser, tokens, run_tasks):
    task = run_tasks[1]
    log_in(browser, server, tokens["carl"], "mine")
    assert browser.find_element("id", "who-name").text.startswith("carl")
    assert browser.find_element("id", "nav-runs").get_attribute("hidden") is not None
    assert not browser.find_elements("id", "create-section") and not browser.find_elements("css selector", "tr.task-row")
    assert {r.get_attribute("data-bin-id") for r in browser.find_elements("css selector", "tr.mine-row")} >= {"BIN-B"}
    browser.find_element("css selector", f'tr.mine-row[data-task-id="{task["id"]}"] a.count-link').click()
    wait_ready(browser, "count", task["id"])
    assert not browser.find_elements("id", "count-by")  # the name comes from the session, never from a field
    browser.find_element("id", "count-qty").send_keys(str(sample_photo(PHOTOS[1])[1]))
    browser.find_element("id", "count-submit").click()
    wait(browser, lambda d: d.find_element("id", "count-result").get_attribute("data-status") or d.find_element("id", "error").text)
    assert browser.find_element("id", "error").text == ""
    assert browser.find_element("id", "count-result").get_attribute("data-status") == "in_review"
    assert str(WRONG_RECORD) not in browser.execute_script(EVERYTHING_SHOWN)

    browser.get(server.url + f"/audit#/tasks/{task['id']}/review")  # the review view is not shown to a counter
    wait_ready(browser, "forbidden")
    assert not browser.find_elements("id", "review-view") and str(WRONG_RECORD) not in browser.execute_script(EVERYTHING_SHOWN)

    review = page_fetch(browser, "GET", f"/v1/tasks/{task['id']}/review")
    assert review["status"] == 403 and str(WRONG_RECORD) not in review["text"]
    crafted = page_fetch(browser, "POST", f"/v1/tasks/{task['id']}/review", {"approve": True, "final": 3})
    assert crafted["status"] == 403, crafted
    worklist = page_fetch(browser, "GET", f"/v1/audit-runs/{task['run_id']}/tasks")
    assert worklist["status"] == 403 and str(WRONG_RECORD) not in worklist["text"]

    log_out(browser)
    for method, path, body in (("GET", "/v1/session", None), ("GET", "/v1/tasks", None), ("GET", f"/v1/tasks/{task['id']}", None),
                               ("POST", f"/v1/tasks/{run_tasks[2]['id']}/counts", {"qty": 1})):
        assert page_fetch(browser, method, path, body)["status"] == 401, path


@needs_chromium
def test_a_reviewer_approves(server, browser, tokens, run_tasks):
    from selenium.webdriver.support.ui import Select

    task = run_tasks[0]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        csrf = login(client, tokens["carl2"]).json()["csrf"]
        counted = client.post(f"/v1/tasks/{task['id']}/counts", json={"qty": 2}, headers={CSRF: csrf})
        assert counted.status_code == 200 and counted.json()["status"] == "in_review", counted.text
    log_in(browser, server, tokens["rita"], "runs")
    assert browser.find_element("id", "nav-mine").get_attribute("hidden") is not None
    assert not browser.find_elements("id", "create-section")  # creating runs is the auditor's
    browser.get(server.url + f"/audit#/runs/{task['run_id']}")
    wait_ready(browser, "run", task["run_id"])
    row = browser.find_element("css selector", f'tr.task-row[data-task-id="{task["id"]}"]')
    assert row.find_element("css selector", ".task-record").text == str(WRONG_RECORD)
    assert not row.find_elements("css selector", "a.count-link")
    row.find_element("css selector", "a.review-link").click()
    wait_ready(browser, "review", task["id"])
    assert not browser.find_elements("id", "review-by")
    Select(browser.find_element("id", "review-reason")).select_by_value("data_entry")
    browser.find_element("id", "review-approve").click()
    wait(browser, lambda d: d.find_element("id", "error").text or d.find_element("tag name", "body").get_attribute("data-ready") == f"run:{task['run_id']}")
    assert browser.find_element("id", "error").text == ""
    assert browser.find_element("css selector", f'tr.task-row[data-task-id="{task["id"]}"]').get_attribute("data-status") == "approved"
    resolution = page_fetch(browser, "GET", f"/v1/tasks/{task['id']}/review")
    assert resolution["status"] == 200 and '"reviewed_by": "rita"' in resolution["text"].replace('":"', '": "')
    log_out(browser)


class EvilPage(http.server.BaseHTTPRequestHandler):
    """A page of another site that posts a form to the dashboard's review route as soon as it loads."""
    target = ""

    def do_GET(self):
        page = (f'<form id="f" method="POST" enctype="text/plain" action="{self.target}">'
                '<input name=\'{"approve": true, "final": 1, "x": "\' value=\'"}\'></form>'
                '<script>document.getElementById("f").submit()</script>').encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, *args):
        pass


@needs_chromium
def test_a_cross_site_form_post_with_the_cookie_is_refused(server, browser, tokens, run_tasks):
    task = run_tasks[2]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        csrf = login(client, tokens["carl2"]).json()["csrf"]
        assert client.post(f"/v1/tasks/{task['id']}/counts", json={"qty": 2}, headers={CSRF: csrf}).status_code == 200
    log_in(browser, server, tokens["rita"], "runs")  # a logged-in reviewer, lured to another site
    handler = type("Evil", (EvilPage,), {"target": f"{server.url}/v1/tasks/{task['id']}/review"})
    evil = http.server.HTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=evil.serve_forever, daemon=True)
    thread.start()
    try:
        browser.get(f"http://localhost:{evil.server_address[1]}/")  # localhost and 127.0.0.1: two sites
        wait(browser, lambda d: d.current_url.startswith(server.url))
        assert '"error"' in browser.find_element("tag name", "body").text
    finally:
        evil.shutdown()
        evil.server_close()
    with httpx.Client(base_url=server.url, timeout=60) as client:
        login(client, tokens["rita"])
        assert client.get(f"/v1/tasks/{task['id']}/review").json()["status"] == "in_review"
