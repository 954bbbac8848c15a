"""The audit API of `bintally serve --audit-db`: a real server on loopback (a uvicorn thread), real ABID photos, the tiny model.

A run is created from an uploaded CSV and photos; its tasks are counted blind, reviewed and exported as labels;
every audit route needs the API key; bad input is one 4xx JSON error that changes nothing; two concurrent counts
of one task give one 200 and one 409 with one observation stored; an Idempotency-Key retry is answered again.
"""

from __future__ import annotations

import csv
import io
import threading

import httpx
import pytest

from bintally.paths import SAMPLE_DIR
from tests.helpers import snapshot_csv
from tests.servers import API_KEY, AUTH
from tests.serving_threads import sample_photo

UPLOADED = ["00450.jpg", "00451.jpg", "00452.jpg", "00453.jpg", "00454.jpg", "00455.jpg"]
IN_ROOT = "00456.jpg"  # referenced as a file:// URI under the server's --file-root
OUTSIDE_ROOT = (SAMPLE_DIR / "metadata" / "00456.json").as_uri()  # a file:// URI outside it: refused, listed as unreadable
BLIND_FORBIDDEN = {"record_qty", "predicted", "expected", "score", "p_record", "probabilities", "counts", "image", "resolution",
                   "selected_by", "rank"}


@pytest.fixture(scope="module")
def server(audit_server):
    return audit_server


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=120) as client:
        yield client


def run_files(csv_text: str, photos: list[str], extra: dict | None = None) -> list:
    files = [("csv", ("snapshots.csv", csv_text.encode(), "text/csv"))]
    files += [("photos", (name, (SAMPLE_DIR / "bin-images" / name).read_bytes(), "image/jpeg")) for name in photos]
    return files + [("photos", (name, data, "image/jpeg")) for name, data in (extra or {}).items()]


@pytest.fixture(scope="module")
def created(http):
    """A run over 6 uploaded photos, one file:// photo in the root, one outside it, and one upload that is no image."""
    rows = [(f"bin-{name[:-4]}", name, sample_photo(name)[1]) for name in UPLOADED]
    rows += [("bin-00456", (SAMPLE_DIR / "bin-images" / IN_ROOT).as_uri(), sample_photo(IN_ROOT)[1]),
             ("bin-outside", OUTSIDE_ROOT, 2), ("bin-broken", "broken.jpg", 1)]
    files = run_files(snapshot_csv(rows), UPLOADED, {"broken.jpg": b"this is not a photo", "spare.jpg": b"never named"})
    data = {"name": "http-run", "budget": "1", "control": "0", "created_by": "tester"}
    first = http.post("/v1/audit-runs", files=files, data=data)
    again = http.post("/v1/audit-runs", files=files, data=data)
    tasks = http.get(f"/v1/audit-runs/{first.json()['id']}/tasks").json()["tasks"]
    return {"first": first, "again": again, "tasks": {t["bin_id"]: t for t in tasks}}


def task_of(created, bin_id: str) -> dict:
    return created["tasks"][bin_id]


def observations(http, task_id: int) -> list[dict]:
    return http.get(f"/v1/tasks/{task_id}/review").json()["counts"]


def test_create_run_is_idempotent_and_lists_unreadable_photos(http, created):
    first, again = created["first"], created["again"]
    assert first.status_code == 201, first.text
    run = first.json()
    assert run["name"] == "http-run" and run["status"] == "open" and run["created_by"] == "tester" and not run["reused"]
    assert run["metrics"]["bins"] == 7 and run["metrics"]["flagged"] == 7 and run["metrics"]["unreadable"] == 2
    unreadable = {u["bin_id"]: u for u in run["unreadable"]}
    assert set(unreadable) == {"bin-outside", "bin-broken"}
    assert unreadable["bin-broken"]["image"] == "broken.jpg" and "not an image" in unreadable["bin-broken"]["problem"]
    assert "outside the allowed file root" in unreadable["bin-outside"]["problem"]
    assert run["unused_photos"] == ["spare.jpg"]
    assert again.status_code == 200 and again.json()["id"] == run["id"] and again.json()["reused"]
    assert again.json()["metrics"]["flagged"] == 7  # nothing scored or selected twice

    listed = http.get("/v1/audit-runs").json()["runs"]
    assert [r["id"] for r in listed].count(run["id"]) == 1
    one = http.get(f"/v1/audit-runs/{run['id']}").json()
    assert one["metrics"]["bins"] == 7 and one["settings"]["budget"] == 1.0

    tasks = http.get(f"/v1/audit-runs/{run['id']}/tasks").json()["tasks"]
    assert len(tasks) == 7 and [t["rank"] for t in tasks] == sorted(t["rank"] for t in tasks)
    scores = [t["score"] for t in sorted(tasks, key=lambda t: t["rank"])]
    assert scores == sorted(scores, reverse=True)  # rank 1 is the most suspicious
    for t in tasks:
        assert t["record_qty"] == sample_photo(t["bin_id"][4:] + ".jpg")[1]
        assert sum(t["probabilities"].values()) == pytest.approx(1, abs=1e-3) and t["status"] == "requested"
    assert http.get(f"/v1/audit-runs/{run['id']}/tasks", params={"status": "approved"}).json()["tasks"] == []


def test_photos_are_served_from_the_store_and_the_file_root(http, created):
    uploaded = task_of(created, "bin-00450")
    answer = http.get(uploaded["image_url"])
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/jpeg"
    assert answer.content == (SAMPLE_DIR / "bin-images" / "00450.jpg").read_bytes()
    in_root = task_of(created, "bin-00456")
    assert http.get(in_root["image_url"]).content == (SAMPLE_DIR / "bin-images" / IN_ROOT).read_bytes()
    missing = http.get("/v1/snapshots/987654/image")
    assert missing.status_code == 404 and "no snapshot" in missing.json()["error"]


def test_blind_count_review_and_labels(http, created):
    run_id = created["first"].json()["id"]
    right, wrong = task_of(created, "bin-00450"), task_of(created, "bin-00451")

    blind = http.get(f"/v1/tasks/{right['id']}")
    assert blind.status_code == 200
    view = blind.json()
    assert view["bin_id"] == "bin-00450" and view["accepts_count"] and view["count_index"] == 0
    assert not BLIND_FORBIDDEN & set(view), view
    assert "record" not in blind.text and "predict" not in blind.text and "probab" not in blind.text

    # the count agrees with the record: straight to review
    counted = http.post(f"/v1/tasks/{right['id']}/counts", json={"qty": right["record_qty"], "by": "ann"})
    assert counted.status_code == 200 and counted.json() == {"task_id": right["id"], "count_index": 0, "status": "in_review"}
    # off the record (tolerance 0): a second blind count is asked for, and that one goes to review
    true_qty = wrong["record_qty"] + 2
    first = http.post(f"/v1/tasks/{wrong['id']}/counts", json={"qty": true_qty, "by": "ann"})
    assert first.json()["status"] == "recount_requested"
    again = http.get(f"/v1/tasks/{wrong['id']}").json()
    assert again["count_index"] == 1 and not BLIND_FORBIDDEN & set(again)  # still blind: not even the first count
    late = http.post(f"/v1/tasks/{wrong['id']}/counts", json={"qty": true_qty, "by": "bob"})  # meant as the first count
    assert late.status_code == 409 and "recount" in late.json()["error"]
    second = http.post(f"/v1/tasks/{wrong['id']}/counts", json={"qty": true_qty, "by": "bob", "comment": "two hidden", "count_index": 1})
    assert second.json() == {"task_id": wrong["id"], "count_index": 1, "status": "in_review"}

    detail = http.get(f"/v1/tasks/{wrong['id']}/review").json()
    assert detail["record_qty"] == wrong["record_qty"] and detail["predicted"] == wrong["predicted"]
    assert [(c["qty"], c["by"]) for c in detail["counts"]] == [(true_qty, "ann"), (true_qty, "bob")]

    ok = http.post(f"/v1/tasks/{right['id']}/review", json={"approve": True, "final": right["record_qty"], "by": "rita"})
    assert ok.status_code == 200 and ok.json()["status"] == "approved"
    assert ok.json()["resolution"]["outcome"] == "record_correct"
    no_reason = http.post(f"/v1/tasks/{wrong['id']}/review", json={"approve": True, "final": true_qty, "by": "rita"})
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["error"]
    fixed = http.post(f"/v1/tasks/{wrong['id']}/review", json={"approve": True, "final": true_qty, "by": "rita", "reason": "found"})
    assert fixed.status_code == 200 and fixed.json()["resolution"]["variance"] == 2
    assert fixed.json()["resolution"]["outcome"] == "record_wrong"

    metrics = http.get(f"/v1/audit-runs/{run_id}").json()["metrics"]
    assert metrics["counted"] >= 2 and metrics["confirmed_errors"] >= 1 and metrics["statuses"]["approved"] >= 2

    export = http.get("/v1/labels/export")
    assert export.status_code == 200 and export.headers["content-type"].startswith("text/csv")
    labels = {row["bin_id"]: row for row in csv.DictReader(io.StringIO(export.text))}
    assert labels["bin-00450"]["count"] == str(right["record_qty"]) and labels["bin-00451"]["count"] == str(true_qty)
    assert labels["bin-00451"]["record_qty"] == str(wrong["record_qty"])


def test_every_audit_route_needs_the_key(server, http, created):
    task = task_of(created, "bin-00452")
    routes = [("GET", "/v1/audit-runs"), ("POST", "/v1/audit-runs"), ("GET", "/v1/audit-runs/1"), ("GET", "/v1/audit-runs/1/tasks"),
              ("GET", f"/v1/tasks/{task['id']}"), ("GET", f"/v1/tasks/{task['id']}/review"),
              ("POST", f"/v1/tasks/{task['id']}/counts"), ("POST", f"/v1/tasks/{task['id']}/review"),
              ("GET", "/v1/labels/export"), ("GET", f"/v1/snapshots/{task['snapshot_id']}/image")]
    with httpx.Client(base_url=server.url, timeout=30) as anonymous:
        for method, path in routes:
            for headers in ({}, {"Authorization": "Bearer not-the-key"}):
                answer = anonymous.request(method, path, headers=headers, json={"qty": 1, "by": "x"} if method == "POST" else None)
                assert answer.status_code == 401, (method, path, answer.status_code)
                assert "API key" in answer.json()["error"]
        page = anonymous.get("/audit")  # the page itself is open; its data calls carry the key
        assert page.status_code == 200 and 'id="view"' in page.text and '"auditEnabled": true' in page.text
        assert "cdn" not in page.text.lower() and API_KEY not in page.text
    assert observations(http, task["id"]) == []
    spec = http.get("/openapi.json").json()["paths"]
    assert {"/v1/audit-runs", "/v1/tasks/{task_id}/counts", "/v1/labels/export"} <= set(spec)


def test_bad_input_is_one_4xx_error_and_changes_nothing(http, created):
    task = task_of(created, "bin-00452")
    runs_before = http.get("/v1/audit-runs").json()["runs"]
    photo = ["00452.jpg"]

    def refused(answer, status: int, words: str):
        assert answer.status_code == status, (answer.status_code, answer.text)
        body = answer.json()
        assert set(body) == {"error"} and words in body["error"], body
        assert "Traceback" not in answer.text

    # creating a run
    refused(http.post("/v1/audit-runs", files=run_files("bin_id,image\nb1,00452.jpg\n", photo)), 400, "missing record_qty")
    refused(http.post("/v1/audit-runs", files=run_files(snapshot_csv([("b1", "00452.jpg", "three")]), photo)), 400, "not a whole number")
    refused(http.post("/v1/audit-runs", files=run_files(snapshot_csv([("b1", "00452.jpg", "2.5")]), photo)), 400, "not a whole number")
    refused(http.post("/v1/audit-runs", files=run_files(snapshot_csv([("b1", "00452.jpg", -1)]), photo)), 400, "below 0")
    refused(http.post("/v1/audit-runs", files=run_files(snapshot_csv([("b1", "elsewhere.jpg", 1)]), photo)), 400, "not one of the uploaded")
    refused(http.post("/v1/audit-runs", files=run_files(snapshot_csv([("b1", "/etc/passwd", 1)]), photo)), 400, "not one of the uploaded")
    refused(http.post("/v1/audit-runs", files=run_files(snapshot_csv([("b1", "00452.jpg", 1)]), photo), data={"budget": "lots"}),
            400, "budget must be a number")
    refused(http.post("/v1/audit-runs", files=run_files(snapshot_csv([("b1", "00452.jpg", 1)]), photo), data={"budget": "2"}),
            400, "budget must be a share")
    refused(http.post("/v1/audit-runs", files=run_files(snapshot_csv([("b1", "00452.jpg", 1)]), photo), data={"colour": "red"}),
            400, "unknown form field")
    refused(http.post("/v1/audit-runs", files=run_files(snapshot_csv([]), photo)), 400, "no rows")
    refused(http.post("/v1/audit-runs", files=[("photos", ("a.jpg", b"x"))]), 400, "no 'csv' file")
    refused(http.post("/v1/audit-runs", json={"csv": "bin_id,image,record_qty"}), 415, "multipart/form-data")
    # the same name with other snapshots: never overwritten (a conflict with the run that holds the name)
    refused(http.post("/v1/audit-runs", files=run_files(snapshot_csv([("b1", "00452.jpg", 1)]), photo), data={"name": "http-run"}),
            409, "exists")

    # unknown things
    refused(http.get("/v1/audit-runs/987654"), 404, "no audit run 987654")
    refused(http.get("/v1/audit-runs/987654/tasks"), 404, "no audit run")
    refused(http.get("/v1/tasks/987654"), 404, "no task 987654")
    refused(http.get("/v1/tasks/987654/review"), 404, "no task")
    refused(http.post("/v1/tasks/987654/counts", json={"qty": 1, "by": "ann"}), 404, "no task")
    refused(http.post("/v1/tasks/987654/review", json={"approve": True, "final": 1, "by": "ann"}), 404, "no task")
    refused(http.get("/v1/tasks/not-a-number"), 400, "task_id")
    refused(http.get(f"/v1/audit-runs/{task['run_id']}/tasks", params={"status": "lost"}), 400, "unknown status")

    # bad bodies
    path = f"/v1/tasks/{task['id']}/counts"
    refused(http.post(path, content=b"{not json", headers={"Content-Type": "application/json"}), 400, "not valid JSON")
    refused(http.post(path, json=[1, 2]), 400, "expected a JSON object")
    refused(http.post(path, json={"qty": "3", "by": "ann"}), 400, "qty must be a whole number")
    refused(http.post(path, json={"qty": 2.5, "by": "ann"}), 400, "qty must be a whole number")
    refused(http.post(path, json={"qty": True, "by": "ann"}), 400, "qty must be a whole number")
    refused(http.post(path, json={"qty": -1, "by": "ann"}), 400, "qty must be from 0")
    refused(http.post(path, json={"qty": 1}), 400, "missing field(s) by")
    refused(http.post(path, json={"qty": 1, "by": " "}), 400, "by")
    refused(http.post(path, json={"qty": 1, "by": "ann", "record_qty": 4}), 400, "unknown field")
    refused(http.post(path, json={"qty": 1, "by": "ann", "count_index": 2}), 400, "count_index must be 0")
    refused(http.post(path, json={"qty": 1, "by": "ann", "count_index": 1}), 409, "waits for its first count")
    refused(http.post(path, json={"qty": 1, "by": "ann"}, headers={"Idempotency-Key": "k" * 201}), 400, "idempotency key")
    review = f"/v1/tasks/{task['id']}/review"
    refused(http.post(review, json={"approve": "yes", "by": "rita"}), 400, "approve must be true or false")
    refused(http.post(review, content=b"", headers={"Content-Type": "application/json"}), 400, "not valid JSON")

    # a task in the wrong state
    refused(http.post(review, json={"approve": True, "final": 1, "by": "rita"}), 409, "only a task in_review")
    assert http.post(path, json={"qty": task["record_qty"], "by": "ann"}).json()["status"] == "in_review"
    refused(http.post(path, json={"qty": task["record_qty"], "by": "ann"}), 409, "takes no count now")
    refused(http.post(review, json={"approve": True, "final": task["record_qty"], "by": "rita", "reason": "stolen"}), 400, "unknown reason")
    refused(http.post(review, json={"approve": True, "final": task["record_qty"], "by": "rita", "outcome": "meh"}), 400, "unknown outcome")
    assert http.post(review, json={"approve": False, "by": "rita", "comment": "photo of another bin"}).json()["status"] == "rejected"
    refused(http.post(path, json={"qty": 1, "by": "ann"}), 409, "closed")
    refused(http.post(review, json={"approve": True, "final": 1, "by": "rita"}), 409, "closed")

    # nothing written by any refusal: one count, one resolution, no new run
    detail = http.get(f"/v1/tasks/{task['id']}/review").json()
    assert len(detail["counts"]) == 1 and detail["resolution"]["decision"] == "rejected"
    assert [r["id"] for r in http.get("/v1/audit-runs").json()["runs"]] == [r["id"] for r in runs_before]


def post_together(url: str, task_id: int, qty: int, n: int = 2) -> list[httpx.Response]:
    barrier = threading.Barrier(n)
    answers: list = [None] * n

    def post(i: int) -> None:
        with httpx.Client(base_url=url, headers=AUTH, timeout=60) as client:
            barrier.wait()
            answers[i] = client.post(f"/v1/tasks/{task_id}/counts", json={"qty": qty, "by": f"counter-{i}"})

    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    return answers


@pytest.mark.parametrize("bin_id, off_by, status", [("bin-00453", 0, "in_review"), ("bin-00454", 3, "recount_requested")])
def test_concurrent_counts_one_wins(server, http, created, bin_id, off_by, status):
    """Two counters submit the first count of one bin at once: one is stored, the other refused, whether the winner
    closed the counting (in_review) or asked for a recount (the loser must not become that recount)."""
    task = task_of(created, bin_id)
    answers = post_together(server.url, task["id"], task["record_qty"] + off_by)
    assert sorted(a.status_code for a in answers) == [200, 409], [a.text for a in answers]
    loser = next(a for a in answers if a.status_code == 409)
    assert set(loser.json()) == {"error"}
    assert len(observations(http, task["id"])) == 1
    assert http.get(f"/v1/tasks/{task['id']}").json()["status"] == status


def test_idempotency_key_replays_the_first_answer(http, created):
    task = task_of(created, "bin-00455")
    qty = task["record_qty"] + 1
    key = {"Idempotency-Key": "count-00455-attempt-1"}
    first = http.post(f"/v1/tasks/{task['id']}/counts", json={"qty": qty, "by": "ann"}, headers=key)
    retry = http.post(f"/v1/tasks/{task['id']}/counts", json={"qty": qty, "by": "ann"}, headers=key)
    assert first.status_code == retry.status_code == 200 and first.json() == retry.json()
    assert first.json()["status"] == "recount_requested"
    assert retry.headers.get("idempotent-replayed") == "true" and "idempotent-replayed" not in first.headers
    assert len(observations(http, task["id"])) == 1
    reused = http.post(f"/v1/tasks/{task['id']}/counts", json={"qty": qty + 1, "by": "ann"}, headers=key)
    assert reused.status_code == 409 and "idempotency key" in reused.json()["error"]
    assert len(observations(http, task["id"])) == 1


def test_audit_db_option_round_trips_and_a_bad_one_stops_the_server(tiny_artifact, tmp_path):
    from bintally.serving.config import ServeConfig
    from tests.cli_helpers import run_cli

    config = ServeConfig(model=str(tiny_artifact.path), audit_db=str(tmp_path / "a.db")).validate()
    assert config.audit_db == f"sqlite:///{tmp_path / 'a.db'}"
    assert ServeConfig.from_json(config.to_json()) == config  # what --workers N hands each worker
    assert ServeConfig(audit_db="postgresql://u:secret@db/audit").public()["audit_db"] == "postgresql://u:***@db/audit"

    for bad, words in ((tmp_path / "no-such-folder" / "a.db", "does not exist"), ("nosuchdialect://x/y", "cannot open the audit database")):
        result = run_cli("serve", "--model", tiny_artifact.path, "--audit-db", bad, "--port", "1")
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0], result.stderr


def test_without_an_audit_db_the_routes_say_how_to_turn_them_on(tiny_artifact, serve):
    from bintally.serving.config import ServeConfig

    server = serve(ServeConfig(model=str(tiny_artifact.path)).validate(), load=False)
    with httpx.Client(base_url=server.url) as client:
        for method, path in (("GET", "/v1/audit-runs"), ("POST", "/v1/audit-runs"), ("GET", "/v1/tasks/1"),
                             ("POST", "/v1/tasks/1/counts"), ("GET", "/v1/labels/export"), ("GET", "/v1/snapshots/1/image")):
            answer = client.request(method, path)
            assert answer.status_code == 404 and "--audit-db" in answer.json()["error"], (path, answer.text)
        assert '"auditEnabled": false' in client.get("/audit").text
        assert not [path for path in client.get("/openapi.json").json()["paths"] if "audit" in path or "tasks" in path]


# ---------------------------------------------------------------- tasks whose record has SKU lines


@pytest.fixture(scope="module")
def lined_tasks(server, tiny_artifact) -> dict:
    """An open run in the server's store over 00460 and 00461 with their record's SKU lines and 00462 by its total
    (as a source with lines writes them), every bin a task."""
    from bintally.audit import list_tasks, open_store
    from tests.lined import lined_run, lined_snapshot, totals_snapshot

    store = open_store(str(server.audit_db))
    try:
        result = lined_run(str(server.audit_db), tiny_artifact.path, [lined_snapshot("00460"), lined_snapshot("00461"),
                                                                      totals_snapshot("00462")], store=store, name="http-lined")
        return {t["bin_id"]: t for t in list_tasks(store, run_id=result.run_id)}
    finally:
        store.close()


def test_a_lined_task_is_counted_blind_per_line_reviewed_with_final_lines_and_exported_per_line(http, lined_tasks):
    from tests.lined import record_lines_of

    task, record = lined_tasks["bin-00460"], record_lines_of("00460")
    blind = http.get(f"/v1/tasks/{task['id']}")
    view = blind.json()
    assert [line["sku"] for line in view["lines"]] == [line.sku for line in record] and len(record) == 3
    assert all(set(line) == {"sku", "length_in", "width_in", "height_in", "weight_lb"} for line in view["lines"])
    assert view["lines"][2]["weight_lb"] is None and view["lines"][0]["height_in"] == pytest.approx(record[0].height_in)
    assert not BLIND_FORBIDDEN & set(view) and "qty" not in blind.text and "record" not in blind.text and "explanation" not in blind.text

    swapped = {record[0].sku: record[0].qty + 1, record[1].sku: record[1].qty - 1, record[2].sku: record[2].qty}  # the total agrees
    first = http.post(f"/v1/tasks/{task['id']}/counts", json={"lines": swapped, "by": "ann"})
    assert first.status_code == 200 and first.json() == {"task_id": task["id"], "count_index": 0, "status": "recount_requested"}
    again = http.get(f"/v1/tasks/{task['id']}")
    assert again.json()["count_index"] == 1 and again.json()["lines"] == view["lines"]  # still blind: not even the first count
    assert not BLIND_FORBIDDEN & set(again.json()) and "qty" not in again.text
    second = http.post(f"/v1/tasks/{task['id']}/counts", json={"qty": 4, "lines": swapped, "by": "bob", "count_index": 1})
    assert second.json()["status"] == "in_review"

    detail = http.get(f"/v1/tasks/{task['id']}/review").json()
    assert [(r["sku"], r["record_qty"], r["count"], r["recount"]) for r in detail["lines"]] == [
        (line.sku, line.qty, swapped[line.sku], swapped[line.sku]) for line in record]
    assert "explanation" in detail and [c["lines"] for c in detail["counts"]] == [swapped, swapped]
    no_lines = http.post(f"/v1/tasks/{task['id']}/review", json={"approve": True, "final": 4, "by": "rita"})
    assert no_lines.status_code == 400 and "final_lines" in no_lines.json()["error"]
    approved = http.post(f"/v1/tasks/{task['id']}/review", json={"approve": True, "final_lines": swapped, "by": "rita", "reason": "misplaced"})
    assert approved.status_code == 200, approved.text
    resolution = approved.json()["resolution"]
    assert (resolution["final_qty"], resolution["variance"], resolution["outcome"]) == (4, 0, "record_wrong")
    assert [(r["sku"], r["variance"]) for r in resolution["lines"]] == [(record[0].sku, 1), (record[1].sku, -1), (record[2].sku, 0)]

    per_line = http.get("/v1/labels/export", params={"lines": "1"})
    assert per_line.status_code == 200 and per_line.headers["content-type"].startswith("text/csv")
    assert "bintally-line-labels.csv" in per_line.headers["content-disposition"]
    rows = [r for r in csv.DictReader(io.StringIO(per_line.text)) if r["bin_id"] == "bin-00460"]
    assert list(rows[0]) == ["bin_id", "image", "sku", "final_qty", "record_qty", "variance", "task_id", "approved_at"]
    assert [(r["sku"], r["final_qty"], r["record_qty"], r["variance"]) for r in rows] == [
        (line.sku, str(swapped[line.sku]), str(line.qty), str(swapped[line.sku] - line.qty)) for line in record]
    totals = {r["bin_id"]: r for r in csv.DictReader(io.StringIO(http.get("/v1/labels/export").text))}
    assert totals["bin-00460"]["count"] == "4"  # the bin total in the existing export


def test_bad_lines_are_one_400_error_and_count_nothing(http, lined_tasks):
    from tests.lined import record_lines_of

    task, record = lined_tasks["bin-00461"], {line.sku: line.qty for line in record_lines_of("00461")}
    first, second = list(record)
    path = f"/v1/tasks/{task['id']}/counts"

    def refused(body: dict, words: str, status: int = 400, url: str = path):
        answer = http.post(url, json=body)
        assert answer.status_code == status, (answer.status_code, answer.text)
        assert set(answer.json()) == {"error"} and words in answer.json()["error"], answer.json()

    refused({"lines": {first: 1}, "by": "ann"}, f"missing {second}")
    refused({"lines": record | {"B0TYPO": 1}, "by": "ann"}, "B0TYPO not on the record")
    refused({"lines": record | {first: -1}, "by": "ann"}, "must be from 0")
    refused({"lines": record | {first: 2.5}, "by": "ann"}, "must be a whole number")
    refused({"lines": record | {first: "2"}, "by": "ann"}, "must be a whole number")
    refused({"lines": [first, second], "by": "ann"}, "must be an object of SKU: quantity")
    refused({"lines": record, "qty": sum(record.values()) + 1, "by": "ann"}, "is not the sum of the SKU lines")
    refused({"lines": record, "found": {first: 1}, "by": "ann"}, "on the record: count them under lines")
    refused({"qty": sum(record.values()), "by": "ann"}, "counted per SKU line")
    refused({"by": "ann"}, "give the number of items counted (qty), or each SKU line's quantity (lines)")
    refused({"lines": {first: 1}, "by": "ann"}, "no SKU lines on its record", url=f"/v1/tasks/{lined_tasks['bin-00462']['id']}/counts")
    refused({"approve": True, "final_lines": record, "by": "rita"}, "only a task in_review", 409, f"/v1/tasks/{task['id']}/review")
    refused({"approve": True, "final_lines": "all of them", "by": "rita"}, "final_lines must be an object", url=f"/v1/tasks/{task['id']}/review")
    assert observations(http, task["id"]) == [] and observations(http, lined_tasks["bin-00462"]["id"]) == []
    assert http.get(f"/v1/tasks/{task['id']}").json()["status"] == "requested"
