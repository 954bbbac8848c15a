"""The web page at GET /, driven by headless Chromium (Selenium 4) against a real server.

A real ABID photo goes in through the file input; the count the page shows must be the one
`bintally predict --json` gives for the same photo with the same model and backend.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest

from bintally.paths import SAMPLE_DIR
from tests.browser import headless_chromium, needs_chromium
from tests.cli_helpers import run_cli
from tests.servers import API_KEY, AUTH

PHOTO = SAMPLE_DIR / "bin-images" / "00452.jpg"
SAMPLE = "05360.jpg"
SCREENSHOT_ENV = "BINTALLY_WEB_SCREENSHOT"  # where to keep the page's screenshot (default: the test's tmp folder)

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def server(protocol_server):
    return protocol_server


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(1280) as driver:
        yield driver


def predicted(model: Path, photo: Path) -> dict:
    result = run_cli("predict", "--model", model, photo, "--json", "--backend", "torch", "--no-progress")
    assert result.returncode == 0, result.stderr
    (only,) = json.loads(result.stdout)
    return only


def wait_for_count(driver, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout).until(lambda d: d.find_element("id", "count").get_attribute("data-count")
                                         or d.find_element("id", "error").text)


def open_page(driver, server, key: str | None) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(server.url + "/")
    box = driver.find_element("id", "key-box")
    assert box.is_displayed(), "the server wants an API key: the page must ask for it"
    field = driver.find_element("id", "api-key")
    field.clear()
    if key:
        field.send_keys(key)
    driver.find_element("id", "result-heading").click()  # blur: the page keeps the key and loads the samples
    if key:
        WebDriverWait(driver, 30).until(lambda d: d.find_element("tag name", "body").get_attribute("data-samples"))


def shown(driver) -> dict:
    bars = driver.find_elements("css selector", "#bars .bar")
    return {"label": driver.find_element("id", "count").text, "count": driver.find_element("id", "count").get_attribute("data-count"),
            "confidence": driver.find_element("id", "confidence").text, "error": driver.find_element("id", "error").text,
            "bars": {b.get_attribute("data-label"): float(b.get_attribute("data-probability")) for b in bars},
            "chosen": [b.get_attribute("data-label") for b in bars if "chosen" in b.get_attribute("class")]}


def test_upload_shows_the_count_predict_gives(server, browser, tiny_artifact, tmp_path):
    want = predicted(tiny_artifact.path, PHOTO)
    open_page(browser, server, API_KEY)
    browser.find_element("css selector", "input[type=file]").send_keys(str(PHOTO))
    wait_for_count(browser)
    page = shown(browser)
    assert page["error"] == ""
    assert page["label"] == want["label"] and int(page["count"]) == want["count"]
    assert float(page["confidence"].rstrip("%")) == pytest.approx(100 * want["confidence"], abs=0.06)
    assert list(page["bars"]) == list(want["probabilities"]) and page["chosen"] == [want["label"]]
    for label, p in want["probabilities"].items():
        assert page["bars"][label] == pytest.approx(p, abs=2e-4)

    # a bundled sample, picked from the list: its count, and the quantity its metadata records
    from selenium.webdriver.support.ui import Select, WebDriverWait

    Select(browser.find_element("id", "sample")).select_by_value(SAMPLE)
    browser.find_element("id", "sample-count").click()
    WebDriverWait(browser, 60).until(lambda d: d.find_element("id", "preview-name").text == SAMPLE
                                     and d.find_element("id", "count").get_attribute("data-count"))
    sample_want = predicted(tiny_artifact.path, SAMPLE_DIR / "bin-images" / SAMPLE)
    page = shown(browser)
    assert page["label"] == sample_want["label"] and int(page["count"]) == sample_want["count"]
    recorded = json.loads((SAMPLE_DIR / "metadata" / SAMPLE.replace(".jpg", ".json")).read_text())["EXPECTED_QUANTITY"]
    assert browser.find_element("id", "recorded").text == str(recorded)

    screenshot = Path(os.environ.get(SCREENSHOT_ENV) or tmp_path / "web-page.png")
    assert browser.save_screenshot(str(screenshot)) and screenshot.stat().st_size > 10_000


def test_wrong_key_is_reported_on_the_page(server, browser):
    open_page(browser, server, "not-the-key")
    browser.find_element("css selector", "input[type=file]").send_keys(str(PHOTO))
    wait_for_count(browser)
    page = shown(browser)
    assert page["count"] == "" and "API key" in page["error"] and PHOTO.name in page["error"]


def test_samples_are_only_the_bundled_photos(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as http:
        listing = http.get("/samples").json()["samples"]
        names = sorted(p.name for p in (SAMPLE_DIR / "bin-images").glob("*.jpg"))
        assert [s["name"] for s in listing] == names
        one = http.get(f"/samples/{names[0]}")
        assert one.status_code == 200 and one.headers["content-type"] == "image/jpeg"
        assert one.content == (SAMPLE_DIR / "bin-images" / names[0]).read_bytes()
        for name in ("..%2Fmetadata%2F00450.json", "..%2F..%2F__init__.py", "%2Fetc%2Fpasswd", "00450.json", "nope.jpg", ".jpg"):
            r = http.get(f"/samples/{name}")
            assert r.status_code == 404, (name, r.status_code)
        page = http.get("/")
        assert page.status_code == 200 and 'id="count"' in page.text and "cdn" not in page.text.lower()
        assert '"apiKeyRequired": true' in page.text


def test_page_is_packaged():
    """static/index.html ships in the wheel (pyproject package-data)."""
    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert "serving/static/*" in text
