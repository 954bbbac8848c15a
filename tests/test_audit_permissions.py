"""Users, roles and tokens on the audit API (`bintally serve --audit-db URL`, `--audit-auth users`, the default): a real
server on loopback with an API key, on SQLite and on the real PostgreSQL, real ABID photos, the tiny model.

Every audit route x every role and every identity that does not hold (none, a bad token, the API key, a disabled user,
a rotated token) answers 2xx, 401 or 403 as docs/serving.md's table says, and a refusal changes nothing in the store.
Every byte a counter can receive is searched for the record, the prediction and the server's file paths. Tokens never
appear in the server's log, an answer or the event log. Separation of duties holds with the same user racing a count
and an approval over two connections.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading

import httpx
import pytest
from sqlalchemy import text

from bintally.paths import SAMPLE_DIR
from tests.servers import API_KEY
from tests.serving_threads import sample_photo

PHOTOS = ["00460.jpg", "00461.jpg", "00462.jpg", "00463.jpg", "00464.jpg", "00465.jpg", "00466.jpg", "00467.jpg"]
IN_ROOT = "00468.jpg"  # a file:// snapshot under --file-root: its path must reach no one
LINED = "00469.jpg"
RECORD = 4321  # the record of one bin: a number nothing else in an answer holds
LINE_QTYS = {"B0SKUAAAA1": 2345, "B0SKUBBBB2": 6789}  # a lined bin's record quantities (total 9134)
SECRET_NUMBERS = [str(RECORD), *map(str, LINE_QTYS.values()), str(sum(LINE_QTYS.values()))]
COUNTER_KEYS = {"tasks", "id", "run_id", "bin_id", "snapshot_id", "status", "assignee", "count_index", "accepts_count", "lines",
                "image_url", "sku", "length_in", "width_in", "height_in", "weight_lb", "task_id", "error"}
NOT_VALID = ("none", "bad token", "api key", "disabled", "rotated")
ROLE_USERS = {"counter": "cora", "reviewer": "rita", "auditor": "aud", "admin": "adm"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def world(request, serve_module, tiny_artifact, tmp_path_factory):
    """The server (users mode, API key, --file-root at the sample's photos) and its store's URL; no users yet."""
    from bintally.serving.config import ServeConfig

    if request.param == "postgresql":
        pg = request.getfixturevalue("postgres_server")
        url = pg.url(pg.create_database("permissions"))
    else:
        url = str(tmp_path_factory.mktemp("permissions") / "audit.db")
    server = serve_module(ServeConfig(model=str(tiny_artifact.path), backend="torch", threads=1, api_key=API_KEY, audit_db=url,
                                      file_root=str(SAMPLE_DIR / "bin-images")).validate())
    server.audit_db = url
    return server


@pytest.fixture(scope="module")
def store(world):
    from bintally.audit.store import open_store

    store = open_store(world.audit_db)
    yield store
    store.close()


def test_with_no_users_every_audit_route_says_how_to_add_one(world):
    answer = httpx.get(f"{world.url}/v1/audit-runs", timeout=30)
    assert answer.status_code == 401 and "bintally audit user add NAME --role admin" in answer.json()["error"]
    assert answer.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{world.url}/v1/tasks", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30).status_code == 401


@pytest.fixture(scope="module")
def tokens(world, store) -> dict[str, str]:
    """Each user's token; "rotated" the first token of a user since given a new one, "disabled" one of a disabled user."""
    from bintally.audit import people

    owner = people.local_owner("setup")
    roles = {"cora": ["counter"], "carl": ["counter"], "rita": ["reviewer"], "aud": ["auditor"], "adm": ["admin"],
             "sam": ["counter", "reviewer"], "dan": ["counter", "reviewer", "auditor"], "rob": ["counter", "reviewer", "auditor"]}
    tokens = {name: people.add_user(store, name, r, owner) for name, r in roles.items()}
    tokens["rotated"], tokens["rob"] = tokens["rob"], people.rotate_token(store, "rob", owner)
    tokens["disabled"] = tokens.pop("dan")
    people.disable_user(store, "dan", owner)
    good = tokens["cora"]
    tokens["bad token"] = good[:-1] + ("A" if good[-1] != "A" else "B")
    return tokens


def bearer(token: str | None) -> dict:
    return {"Authorization": f"Bearer {token}"} if token else {}


def client(world, token: str | None) -> httpx.Client:
    return httpx.Client(base_url=world.url, headers=bearer(token), timeout=120)


def run_upload() -> list:
    rows = [(f"bin-{n[:-4]}", n, RECORD if i == 0 else sample_photo(n)[1]) for i, n in enumerate(PHOTOS)]
    rows.append(("bin-in-root", (SAMPLE_DIR / "bin-images" / IN_ROOT).as_uri(), sample_photo(IN_ROOT)[1]))
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([("bin_id", "image", "record_qty"), *rows])
    files = [("csv", ("bins.csv", out.getvalue().encode(), "text/csv"))]
    return files + [("photos", (n, (SAMPLE_DIR / "bin-images" / n).read_bytes(), "image/jpeg")) for n in PHOTOS]


def lined_upload() -> list:
    bins = {"bins": [{"bin_id": "bin-lined", "image": LINED, "lines": [{"sku": s, "qty": q} for s, q in LINE_QTYS.items()]}]}
    return [("records", ("bins.json", json.dumps(bins).encode(), "application/json")),
            ("photos", (LINED, (SAMPLE_DIR / "bin-images" / LINED).read_bytes(), "image/jpeg"))]


@pytest.fixture(scope="module")
def runs(world, tokens) -> dict:
    """Two runs created by the auditor (one of totals, one with SKU lines); every bin is a task."""
    with client(world, tokens["aud"]) as auditor:
        made = [auditor.post("/v1/audit-runs", files=upload(), data={"name": name, "budget": "1", "control": "0"})
                for name, upload in (("totals", run_upload), ("lined", lined_upload))]
        assert all(r.status_code == 201 for r in made), [r.text for r in made]
        with client(world, tokens["rita"]) as reviewer:
            tasks = [t for r in made for t in reviewer.get(f"/v1/audit-runs/{r.json()['id']}/tasks").json()["tasks"]]
    return {"run": made[0].json(), "tasks": {t["bin_id"]: t for t in tasks}}


def fingerprint(store) -> tuple:
    """What a refusal must leave as it was: every task's state, and how many rows each table of decisions holds."""
    with store.session() as session:
        tasks = session.execute(text("SELECT id, status, version, assignee FROM tasks ORDER BY id")).all()
        counts = [session.execute(text(f"SELECT count(*) FROM {t}")).scalar()
                  for t in ("audit_runs", "count_observations", "resolutions", "audit_events", "users", "tokens")]
    return tuple(map(tuple, tasks)), tuple(counts)


def matrix(runs) -> list[tuple[str, str, dict, dict[str, int]]]:
    """(method, path, request keywords, {role: status}) of every audit route; a role left out gets 403. A permitted
    write is sent so that the workflow refuses it after the check (409: the wrong count index, a task not in review)."""
    run_id, task = runs["run"]["id"], runs["tasks"]["bin-00461"]
    readers = {"auditor": 200, "reviewer": 200}
    return [
        ("POST", "/v1/audit-runs", {"files": run_upload(), "data": {"name": "totals", "budget": "1", "control": "0"}}, {"auditor": 200}),
        ("GET", "/v1/audit-runs", {}, readers),
        ("GET", f"/v1/audit-runs/{run_id}", {}, readers),
        ("GET", f"/v1/audit-runs/{run_id}/tasks", {}, readers),
        ("GET", "/v1/tasks", {}, {"counter": 200}),
        ("GET", f"/v1/tasks/{task['id']}", {}, readers | {"counter": 200}),
        ("GET", f"/v1/tasks/{task['id']}/review", {}, readers),
        ("POST", f"/v1/tasks/{task['id']}/counts", {"json": {"qty": 1, "count_index": 1}}, {"counter": 409}),
        ("POST", f"/v1/tasks/{task['id']}/review", {"json": {"approve": True, "final": 1}}, {"reviewer": 409}),
        ("GET", "/v1/labels/export", {}, {"auditor": 200}),
        ("GET", task["image_url"], {}, readers | {"counter": 200}),
    ]


def token_secret(token: str) -> str:
    """The secret part of btk_<lookup>_<secret> (which may itself hold '_'); another key as it is."""
    return token.split("_", 2)[2] if token.startswith("btk_") else token


def test_every_route_answers_each_role_and_each_bad_identity_as_documented(world, store, tokens, runs, caplog):
    caplog.set_level(logging.DEBUG)
    identities = {role: tokens[name] for role, name in ROLE_USERS.items()}
    identities |= {"none": None, "api key": API_KEY} | {k: tokens[k] for k in ("bad token", "disabled", "rotated")}
    bodies = []
    for method, path, kwargs, allowed in matrix(runs):
        for who, token in identities.items():
            before = fingerprint(store)
            with client(world, token) as http:
                answer = http.request(method, path, **kwargs)
            bodies.append(answer.content)
            expected = 401 if who in NOT_VALID else allowed.get(who, 403)
            assert answer.status_code == expected, f"{method} {path} as {who}: {answer.status_code} {answer.text[:300]}"
            if expected == 401:
                assert answer.headers["www-authenticate"].startswith("Bearer")
            if expected >= 400:
                assert set(answer.json()) == {"error"} and fingerprint(store) == before, f"{method} {path} as {who} changed the store"
    every_token = [t for t in tokens.values()] + [API_KEY]
    for token in every_token:
        secret = token_secret(token)
        assert not any(secret.encode() in body for body in bodies), "a token in an answer"
        assert secret not in caplog.text, "a token in the server's log"
    with store.session() as session:
        logged = " ".join(str(row) for row in session.execute(text("SELECT * FROM audit_events")).all())
    assert not any(token_secret(t) in logged for t in every_token), "a token in the event log"


def test_a_rotated_token_and_a_disabled_user_stop_at_once(world, store, tokens, runs):
    from bintally.audit import people

    owner = people.local_owner("setup")
    with client(world, tokens["carl"]) as carl:
        assert carl.get("/v1/tasks").status_code == 200
        people.disable_user(store, "carl", owner)
        refused = carl.get("/v1/tasks")
    assert refused.status_code == 401 and "disabled" in refused.json()["error"] and tokens["carl"] not in refused.text
    fresh = people.add_user(store, "carla", ["counter"], owner)
    with client(world, fresh) as carla:
        assert carla.get("/v1/tasks").status_code == 200
        people.rotate_token(store, "carla", owner)
        assert carla.get("/v1/tasks").status_code == 401


def counter_answers(world, tokens, runs) -> list[httpx.Response]:
    """Every answer the counter cora can get: her list, each task's blind view and photo, the refused views, her counts."""
    answers = []
    with client(world, tokens["cora"]) as cora:
        answers.append(listed := cora.get("/v1/tasks"))
        for task in listed.json()["tasks"]:
            answers += [cora.get(f"/v1/tasks/{task['id']}"), cora.get(f"/v1/tasks/{task['id']}/review")]
        run_id = runs["run"]["id"]
        answers += [cora.get(f"/v1/audit-runs/{run_id}/tasks"), cora.get("/v1/labels/export"), cora.get("/v1/audit-runs")]
        secret_bin, lined = runs["tasks"]["bin-00460"], runs["tasks"]["bin-lined"]
        answers.append(cora.post(f"/v1/tasks/{secret_bin['id']}/counts", json={"qty": 3}))  # off the record: a recount
        answers.append(cora.post(f"/v1/tasks/{lined['id']}/counts", json={"lines": {"B0SKUAAAA1": 1}}))  # a line missing: 400
        answers.append(cora.post(f"/v1/tasks/{lined['id']}/counts", json={"lines": {s: 1 for s in LINE_QTYS}}))
    return answers


def assert_blind(answer: httpx.Response) -> None:
    body = answer.content
    assert not any(number.encode() in body for number in SECRET_NUMBERS), answer.text[:300]
    assert str(SAMPLE_DIR).encode() not in body and b"file:" not in body and b"bin-images" not in body, answer.text[:300]
    if answer.headers["content-type"].startswith("application/json"):
        assert keys_of(answer.json()) <= COUNTER_KEYS, answer.text[:300]


def keys_of(value) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in keys_of(v)}
    if isinstance(value, list):
        return {k for v in value for k in keys_of(v)}
    return set()


def test_a_counter_never_receives_the_record_the_prediction_or_a_path(world, tokens, runs):
    answers = counter_answers(world, tokens, runs)
    listed = answers[0].json()["tasks"]
    assert {t["bin_id"] for t in listed} == set(runs["tasks"])  # every open task, none assigned: all hers to count
    assert answers[-3].json()["status"] == "recount_requested" and answers[-2].status_code == 400 and answers[-1].status_code == 200
    with client(world, tokens["cora"]) as cora:
        for task in (t for t in listed if t["bin_id"] not in ("bin-00460", "bin-lined")):  # the two she has counted since
            photo = cora.get(task["image_url"])
            name = IN_ROOT if task["bin_id"] == "bin-in-root" else f"{task['bin_id'][4:]}.jpg"
            assert photo.status_code == 200 and photo.content == (SAMPLE_DIR / "bin-images" / name).read_bytes()
        mine_no_more = cora.get(runs["tasks"]["bin-00460"]["image_url"])  # its recount goes to someone else
    assert mine_no_more.status_code == 403
    for answer in answers + [mine_no_more]:
        assert_blind(answer)
    assert any(a.status_code == 403 for a in answers)  # the reviewer's views were refused, not skipped


def test_the_review_view_names_no_server_path(world, tokens, runs):
    with client(world, tokens["rita"]) as rita:
        task = runs["tasks"]["bin-in-root"]
        views = [rita.get(f"/v1/tasks/{task['id']}/review"), rita.get(f"/v1/audit-runs/{task['run_id']}/tasks")]
        assert rita.get(task["image_url"]).content == (SAMPLE_DIR / "bin-images" / IN_ROOT).read_bytes()
    for view in views:
        assert view.status_code == 200 and str(SAMPLE_DIR) not in view.text and "file:" not in view.text
    assert views[0].json()["image_name"] == IN_ROOT and views[0].json()["image_url"] == task["image_url"]


def test_names_come_from_the_token_and_separation_of_duties_holds(world, store, tokens, runs):
    task = runs["tasks"]["bin-00462"]
    path = f"/v1/tasks/{task['id']}"
    with client(world, tokens["cora"]) as cora, client(world, tokens["sam"]) as sam, \
            client(world, tokens["rita"]) as rita, client(world, tokens["aud"]) as aud:
        before = fingerprint(store)
        assert cora.post(f"{path}/counts", json={"qty": task["record_qty"], "by": "rita"}).status_code == 400
        assert aud.post("/v1/audit-runs", files=run_upload(), data={"name": "x", "created_by": "rita"}).status_code == 400
        assert fingerprint(store) == before
        assert sam.post(f"{path}/counts", json={"qty": task["record_qty"]}).json()["status"] == "in_review"
        own = sam.post(f"{path}/review", json={"approve": True, "final": task["record_qty"]})
        assert own.status_code == 403 and fingerprint(store)[1][2] == before[1][2]  # no resolution
        approved = rita.post(f"{path}/review", json={"approve": True, "final": task["record_qty"]})
        assert approved.status_code == 200, approved.text
        detail = rita.get(f"{path}/review").json()
    assert [c["by"] for c in detail["counts"]] == ["sam"] and detail["resolution"]["approved_by"] == "rita"
    assert runs["run"]["created_by"] == "aud"

    recount = runs["tasks"]["bin-00460"]  # cora's count was off the record (test above): the recount is someone else's
    with client(world, tokens["cora"]) as cora, client(world, tokens["sam"]) as sam:
        assert recount["id"] not in [t["id"] for t in cora.get("/v1/tasks").json()["tasks"]]
        assert cora.post(f"/v1/tasks/{recount['id']}/counts", json={"qty": 3, "count_index": 1}).status_code == 403
        assert sam.post(f"/v1/tasks/{recount['id']}/counts", json={"qty": 3, "count_index": 1}).status_code == 200


def test_a_session_cookie_needs_its_csrf_token_to_write(world, store, tokens, runs):
    from bintally.audit import people

    who = people.authenticate(store, tokens["sam"], "test")
    secret, csrf = people.open_session(store, who)
    task = runs["tasks"]["bin-00463"]
    url = f"{world.url}/v1/tasks/{task['id']}/counts"
    with httpx.Client(cookies={people.SESSION_COOKIE: secret}, timeout=60) as browser:
        assert browser.get(f"{world.url}/v1/tasks/{task['id']}").status_code == 200
        before = fingerprint(store)
        for headers in ({}, {people.CSRF_HEADER: "wrong"}, {people.CSRF_HEADER: csrf + "x"}):
            refused = browser.post(url, json={"qty": 1}, headers=headers)
            assert refused.status_code == 403 and "CSRF" in refused.json()["error"]
        assert fingerprint(store) == before
        assert browser.post(url, json={"qty": task["record_qty"]}, headers={people.CSRF_HEADER: csrf}).status_code == 200
        people.close_session(store, secret, who)
        assert browser.get(f"{world.url}/v1/tasks/{task['id']}").status_code == 401


def test_the_same_user_racing_a_count_and_its_approval_wins_at_most_one(world, store, tokens, runs):
    """sam (counter and reviewer) counts and approves each task at once over two connections: never both."""
    tasks = [runs["tasks"][f"bin-{n[:-4]}"] for n in ("00464.jpg", "00465.jpg", "00466.jpg", "00467.jpg")]
    results = {}

    def send(kind: str, task: dict, barrier: threading.Barrier):
        with client(world, tokens["sam"]) as sam:
            body = {"qty": task["record_qty"]} if kind == "counts" else {"approve": True, "final": task["record_qty"]}
            barrier.wait()
            results[kind, task["id"]] = sam.post(f"/v1/tasks/{task['id']}/{kind}", json=body).status_code

    for task in tasks:
        barrier = threading.Barrier(2)
        threads = [threading.Thread(target=send, args=(kind, task, barrier)) for kind in ("counts", "review")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert results["counts", task["id"]] == 200 and results["review", task["id"]] in (403, 409), results
    with store.session() as session:
        selfapproved = session.execute(text(
            "SELECT count(*) FROM resolutions r JOIN count_observations c ON c.task_id = r.task_id "
            "WHERE r.approved_by = c.counted_by")).scalar()
    assert selfapproved == 0
