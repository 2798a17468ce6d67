"""A real browser for the dashboard tests: Debian's headless Chromium driven by Selenium
through Debian's chromedriver, with nothing fetched from the network."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMEDRIVER = "/usr/bin/chromedriver"
SKIP_VARIABLE = "BACKY_SKIP_BROWSER"
#: The window sizes of the screenshots: a phone (an iPhone 12's CSS pixels) and a desktop.
PHONE, DESKTOP = (390, 844), (1280, 900)


def require_browser() -> tuple[str, str]:
    """Chromium's and chromedriver's paths; fail the test (or skip it, when asked to)
    when they are missing."""
    browser = next((path for path in CHROMIUM if Path(path).exists()), shutil.which("chromium"))
    driver = CHROMEDRIVER if Path(CHROMEDRIVER).exists() else shutil.which("chromedriver")
    if browser and driver:
        return browser, driver
    message = (
        "Chromium is not installed: the dashboard's browser tests need Debian's chromium"
        " and chromium-driver packages (apt-get update && apt-get install -y chromium"
        " chromium-driver; scripts/test does it). Set"
        f" {SKIP_VARIABLE}=1 to skip them on purpose."
    )
    if os.environ.get(SKIP_VARIABLE) == "1":
        pytest.skip(message)
    pytest.fail(message)


def start_chromium(profile: Path) -> Any:
    """Headless Chromium in a fresh profile, as a Selenium driver."""
    browser, driver = require_browser()
    # Selenium would otherwise look for drivers and browsers online.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in ("--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--hide-scrollbars",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    chrome = webdriver.Chrome(service=Service(driver), options=options)
    chrome.set_page_load_timeout(20)
    return chrome


def screenshot(chrome: Any, path: Path, size: tuple[int, int]) -> None:
    """The page at this window size, whole (the window grows to the page's height)."""
    chrome.set_window_size(*size)
    height, frame = chrome.execute_script(
        "return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
    chrome.set_window_size(size[0], min(max(size[1], int(height) + int(frame)), 2400))
    chrome.save_screenshot(str(path))
    chrome.set_window_size(*size)
