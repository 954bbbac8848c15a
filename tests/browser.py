"""Headless Chromium (Debian's chromium + chromium-driver, installed by `make test`) driven by Selenium 4."""

from __future__ import annotations

import os
from contextlib import contextmanager

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

INSTALLED = os.access(CHROMIUM, os.X_OK) and os.access(CHROMEDRIVER, os.X_OK)
MISSING = f"headless Chromium is not installed ({CHROMIUM}, {CHROMEDRIVER}: apt-get install chromium chromium-driver, as `make test` does)"
# without Chromium the browser tests skip, except under CI=true, where headless_chromium fails them
needs_chromium = pytest.mark.skipif(not INSTALLED and os.environ.get("CI", "").lower() != "true", reason=MISSING)


@contextmanager
def headless_chromium(width: int = 1280, height: int = 1000):
    """A Chrome WebDriver on headless Chromium, quit at the end."""
    if not INSTALLED:
        pytest.fail(MISSING)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", f"--window-size={width},{height}",
                "--disable-extensions", "--no-first-run", "--disable-background-networking"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
