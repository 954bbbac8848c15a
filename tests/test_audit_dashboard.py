"""The audit dashboard at GET /audit, driven by headless Chromium (Selenium 4) against a real server with an audit store.

Through the page: create a run from real ABID photos and a CSV, open a task's blind count view (which must hold
neither the record nor the prediction anywhere in its DOM), count it, approve it in the reviewer's form, and see the
task's status and the run's summary change.
"""

from __future__ import annotations

import csv
import os

import pytest

from tests.browser import headless_chromium, needs_chromium
from tests.servers import API_KEY
from tests.serving_threads import sample_photo

PHOTOS = ["00610.jpg", "00611.jpg", "00612.jpg"]
COUNTED = "00611.jpg"  # its record in the CSV is a keying error: 857 items, in a bin holding 2
WRONG_RECORD = 857  # a number nothing else on the blind view can show (not an id, a count or a date part)
SCREENSHOTS_ENV = "BINTALLY_AUDIT_SCREENSHOTS"  # a folder: keep screenshots of the worklist, the blind count and the review

pytestmark = needs_chromium

EVERYTHING_SHOWN = """
const out = [];
for (const node of document.querySelectorAll("body *")) {
  if (node.tagName === "SCRIPT") continue;
  for (const a of node.attributes) if (a.name !== "src") out.push([a.name, a.value]);
}
return {attributes: out, text: document.body.innerText, html: document.getElementById("view").outerHTML.replace(/src="[^"]*"/g, "")};
"""


@pytest.fixture(scope="module")
def server(serve_module, tiny_artifact, tmp_path_factory):
    """The audit server with --audit-auth open (no users: the API key, and names typed in the forms, as before users
    existed); tests/test_dashboard_roles.py drives the dashboard with users."""
    from bintally.paths import SAMPLE_DIR
    from bintally.serving.config import ServeConfig

    db = tmp_path_factory.mktemp("dashboard-db") / "audit.db"
    server = serve_module(ServeConfig(model=str(tiny_artifact.path), backend="torch", threads=1, api_key=API_KEY, audit_db=str(db),
                                      audit_auth="open", file_root=str(SAMPLE_DIR / "bin-images")).validate())
    server.audit_db = db
    return server


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(1400) as driver:
        yield driver


def wait(driver, condition, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    def check(d):
        error = d.find_element("id", "error").text
        if error:
            raise AssertionError(f"the page shows an error: {error}")
        return condition(d)

    return WebDriverWait(driver, timeout).until(check)


def wait_ready(driver, view: str, ident="") -> None:
    wait(driver, lambda d: d.find_element("tag name", "body").get_attribute("data-ready") == f"{view}:{ident}")


def summary(driver) -> dict:
    return {name: driver.find_element("id", f"m-{name}").get_attribute("data-value")
            for name in ("bins", "flagged", "counted", "confirmed-errors", "errors-model")}


def screenshot(driver, name: str) -> None:
    folder = os.environ.get(SCREENSHOTS_ENV)
    if folder:
        os.makedirs(folder, exist_ok=True)
        driver.save_screenshot(os.path.join(folder, f"audit-{name}.png"))


def row(driver, bin_id: str):
    return driver.find_element("css selector", f'tr.task-row[data-bin-id="{bin_id}"]')


def test_create_count_review_through_the_page(server, browser, tmp_path):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    records = {name: sample_photo(name)[1] for name in PHOTOS}
    records[COUNTED] = WRONG_RECORD
    true_qty = sample_photo(COUNTED)[1]
    bins = {name: f"BIN-{'ABC'[i]}" for i, name in enumerate(PHOTOS)}  # no digits in the bin ids
    table = tmp_path / "snapshots.csv"
    with open(table, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["bin_id", "image", "record_qty"])
        writer.writerows((bins[name], name, records[name]) for name in PHOTOS)

    # (1) create a run through the form: the CSV and the photos
    browser.get(server.url + "/audit")
    key = browser.find_element("id", "api-key")
    key.clear()
    key.send_keys(API_KEY, Keys.TAB)  # change: the page keeps the key and reloads its view
    wait_ready(browser, "runs")
    browser.find_element("id", "csv-file").send_keys(str(table))
    browser.find_element("id", "photos-file").send_keys("\n".join(str(sample_photo(name)[0]) for name in PHOTOS))
    browser.find_element("id", "run-name").send_keys("dashboard-run")
    browser.find_element("id", "run-budget").send_keys("1")
    browser.find_element("id", "run-tolerance").send_keys("1000")  # any first count goes straight to review
    browser.find_element("id", "run-by").send_keys("dana")
    browser.find_element("id", "create-submit").click()
    wait(browser, lambda d: d.find_element("id", "create-result").get_attribute("data-run-id"), 60)
    run_id = browser.find_element("id", "create-result").get_attribute("data-run-id")
    assert "3 bins scored" in browser.find_element("id", "create-notice").text
    wait(browser, lambda d: d.find_elements("css selector", f'tr.run-row[data-run-id="{run_id}"]'))
    screenshot(browser, "runs")

    # the worklist: every bin, most suspicious first, with its photo, record, prediction and probability bars
    browser.find_element("id", "open-run").click()
    wait_ready(browser, "run", run_id)
    rows = browser.find_elements("css selector", "tr.task-row")
    assert sorted(r.get_attribute("data-bin-id") for r in rows) == sorted(bins.values())
    scores = [float(r.get_attribute("data-score")) for r in rows]
    assert scores == sorted(scores, reverse=True)
    wait(browser, lambda d: len(d.find_elements("css selector", 'img.thumb[data-loaded="true"]')) == 3)
    counted_row = row(browser, bins[COUNTED])
    assert counted_row.find_element("css selector", ".task-record").text == str(WRONG_RECORD)  # the reviewer's list shows it
    assert len(counted_row.find_elements("css selector", ".prob")) == 7
    screenshot(browser, "worklist")
    before = summary(browser)
    assert before == {"bins": "3", "flagged": "3", "counted": "0", "confirmed-errors": "0", "errors-model": ""}
    task_id = counted_row.get_attribute("data-task-id")

    # (2) the counter's blind view: the bin and its photo, never the record or the prediction
    counted_row.find_element("css selector", "a.count-link").click()
    wait_ready(browser, "count", task_id)
    wait(browser, lambda d: d.find_element("id", "count-photo").get_attribute("data-loaded") == "true")
    assert browser.find_element("id", "count-bin").text == bins[COUNTED]

    def assert_blind():
        shown = browser.execute_script(EVERYTHING_SHOWN)
        assert str(WRONG_RECORD) not in shown["text"] and str(WRONG_RECORD) not in shown["html"]
        for name, value in shown["attributes"]:
            assert str(WRONG_RECORD) not in value, (name, value)
            assert not any(word in name for word in ("record", "predict", "probab", "score", "expected")), name
        for word in ("record", "predict", "probab", "expected", "score"):
            assert word not in shown["html"].lower(), word
        assert not browser.find_elements("css selector", ".task-record, .task-predicted, .prob, .probs, #review-record, tr.task-row")

    assert_blind()
    screenshot(browser, "count")
    browser.find_element("id", "count-qty").send_keys(str(true_qty))
    by = browser.find_element("id", "count-by")
    by.clear()
    by.send_keys("carl")
    browser.find_element("id", "count-submit").click()
    wait(browser, lambda d: d.find_element("id", "count-result").get_attribute("data-status"))
    assert browser.find_element("id", "count-result").get_attribute("data-status") == "in_review"
    assert_blind()

    # (3) the reviewer's form: the record and the count side by side; approve the counted quantity
    browser.find_element("id", "back-to-run").click()
    wait_ready(browser, "run", run_id)
    assert row(browser, bins[COUNTED]).get_attribute("data-status") == "in_review"
    assert summary(browser)["counted"] == "1"
    row(browser, bins[COUNTED]).find_element("css selector", "a.review-link").click()
    wait_ready(browser, "review", task_id)
    assert browser.find_element("id", "review-record").text == str(WRONG_RECORD)
    assert browser.find_element("css selector", "#review-counts li").get_attribute("data-qty") == str(true_qty)
    assert browser.find_element("id", "review-final").get_attribute("value") == str(true_qty)  # the count, ready to approve
    screenshot(browser, "review")
    Select(browser.find_element("id", "review-reason")).select_by_value("data_entry")
    browser.find_element("id", "review-by").clear()
    browser.find_element("id", "review-by").send_keys("rita")
    browser.find_element("id", "review-approve").click()

    # (4) back on the worklist: the task approved, and the run's summary counts a confirmed error
    wait_ready(browser, "run", run_id)
    assert row(browser, bins[COUNTED]).get_attribute("data-status") == "approved"
    assert row(browser, bins[COUNTED]).find_element("css selector", ".task-status").text == "approved"
    after = summary(browser)
    assert after == {"bins": "3", "flagged": "3", "counted": "1", "confirmed-errors": "1", "errors-model": "100"}
    assert "approved" in browser.find_element("id", "status").text
    screenshot(browser, "after-review")


LINED_PHOTO = "00463"  # its record lists four SKUs, one item each
LINED_WRONG = 857  # the record of its first SKU, keyed wrongly: the blind count view must show it nowhere
EXPLANATION = "the photo shows far fewer items than the first line says"


def test_a_lined_task_is_counted_and_reviewed_per_line_through_the_page(server, browser, tiny_artifact, monkeypatch):
    from dataclasses import replace

    import httpx
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from bintally.audit import open_store
    from bintally.audit import run as run_module
    from tests.lined import lined_run, lined_snapshot, record_lines_of
    from tests.servers import AUTH

    real = record_lines_of(LINED_PHOTO)
    record = (replace(real[0], qty=LINED_WRONG),) + real[1:]
    scores = run_module.score_bins
    monkeypatch.setattr(run_module, "score_bins", lambda prediction, snapshots, score="auto":
                        scores(prediction, snapshots, score) | {"explanation": [[EXPLANATION] for _ in snapshots]})
    store = open_store(str(server.audit_db))
    try:
        result = lined_run(str(server.audit_db), tiny_artifact.path, [lined_snapshot(LINED_PHOTO, "BIN-LINED", record)], store=store,
                           name="dashboard-lined", tolerance=1000)  # any first count goes straight to review
    finally:
        store.close()
    monkeypatch.undo()

    browser.get(server.url + f"/audit#/runs/{result.run_id}")
    key = browser.find_element("id", "api-key")
    key.clear()
    key.send_keys(API_KEY, Keys.TAB)
    wait_ready(browser, "run", result.run_id)
    lined_row = row(browser, "BIN-LINED")
    assert lined_row.find_element("css selector", ".task-explanation").text == EXPLANATION  # the worklist says why
    task_id = lined_row.get_attribute("data-task-id")

    # the blind count: one input per SKU with its size, never a recorded quantity, the record's total or the explanation
    lined_row.find_element("css selector", "a.count-link").click()
    wait_ready(browser, "count", task_id)
    inputs = browser.find_elements("css selector", "#count-lines input.line-qty[data-sku]")
    assert [i.get_attribute("data-sku") for i in inputs] == [line.sku for line in record]
    first_row = browser.find_element("css selector", "tr.count-line").text
    assert record[0].sku in first_row and " in" in first_row and "lb" in first_row
    assert not browser.find_elements("id", "count-qty")
    shown = browser.execute_script(EVERYTHING_SHOWN)
    total = str(sum(line.qty for line in record))
    for secret in (str(LINED_WRONG), total, EXPLANATION):
        assert secret not in shown["text"] and secret not in shown["html"], secret
        assert not any(secret in value for _, value in shown["attributes"]), secret
    for word in ("record", "predict", "probab", "expected", "score", "explanation"):
        assert word not in shown["html"].lower(), word
    screenshot(browser, "count-lines")
    for line, box in zip(real, inputs):
        box.send_keys(str(line.qty))
    browser.find_element("id", "add-found").click()
    browser.find_element("id", "found-sku-0").send_keys("B0FOUNDSKU")
    browser.find_element("id", "found-qty-0").send_keys("2")
    by = browser.find_element("id", "count-by")
    by.clear()
    by.send_keys("carl")
    browser.find_element("id", "count-submit").click()
    wait(browser, lambda d: d.find_element("id", "count-result").get_attribute("data-status"))
    assert browser.find_element("id", "count-result").get_attribute("data-status") == "in_review"

    # the review: per line the record, the count and a final quantity to approve (the count's), and the explanation
    browser.find_element("id", "back-to-run").click()
    wait_ready(browser, "run", result.run_id)
    row(browser, "BIN-LINED").find_element("css selector", "a.review-link").click()
    wait_ready(browser, "review", task_id)
    lines = browser.find_elements("css selector", "#review-lines tr.review-line")
    assert [r.get_attribute("data-sku") for r in lines] == [line.sku for line in record] + ["B0FOUNDSKU"]
    assert lines[0].find_element("css selector", ".line-record").text == str(LINED_WRONG)
    assert lines[0].find_element("css selector", ".line-count").text == str(real[0].qty)
    assert lines[0].find_element("css selector", ".line-variance").text == str(real[0].qty - LINED_WRONG)
    assert lines[-1].get_attribute("data-on-record") == "false" and lines[-1].find_element("css selector", ".line-record").text == "0"
    finals = [r.find_element("css selector", "input.final-line").get_attribute("value") for r in lines]
    assert finals == [str(line.qty) for line in real] + ["2"]
    assert browser.find_element("id", "review-final").get_attribute("value") == str(sum(line.qty for line in real) + 2)
    assert browser.find_element("id", "review-explanation").text == EXPLANATION
    found_final = lines[-1].find_element("css selector", "input.final-line")
    found_final.clear()
    found_final.send_keys("1")  # the reviewer corrects the found quantity; the total follows
    assert browser.find_element("id", "review-final").get_attribute("value") == str(sum(line.qty for line in real) + 1)
    screenshot(browser, "review-lines")
    Select(browser.find_element("id", "review-reason")).select_by_value("data_entry")
    browser.find_element("id", "review-by").clear()
    browser.find_element("id", "review-by").send_keys("rita")
    browser.find_element("id", "review-approve").click()
    wait_ready(browser, "run", result.run_id)
    assert row(browser, "BIN-LINED").get_attribute("data-status") == "approved"

    resolution = httpx.get(f"{server.url}/v1/tasks/{task_id}/review", headers=AUTH).json()["resolution"]
    assert resolution["final_qty"] == sum(line.qty for line in real) + 1 and resolution["outcome"] == "record_wrong"
    assert [(r["sku"], r["final_qty"], r["variance"]) for r in resolution["lines"]] == [
        (record[0].sku, real[0].qty, real[0].qty - LINED_WRONG)] + [(line.sku, line.qty, 0) for line in real[1:]] + [("B0FOUNDSKU", 1, 1)]
