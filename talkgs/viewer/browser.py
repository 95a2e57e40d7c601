"""A headless Chromium on the viewer's page, for its tests and ``tools/bench_viewer.py --browser``.

Selenium drives Debian's Chromium (``apt-get install chromium chromium-driver``); nothing here is used by
``talkgs view`` itself, and selenium is imported only when a browser is asked for.
"""

from __future__ import annotations

import shutil


class BrowserUnavailable(RuntimeError):
    """Selenium, Chromium or its driver is missing; the message says which and how to install it."""


def headless_chromium(width: int = 900, height: int = 640):
    """A Selenium ``webdriver.Chrome`` on a headless Chromium that may autoplay audio without a sound card."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        raise BrowserUnavailable("selenium is not installed (pip install -e '.[dev]')") from exc
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)),
                   None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        raise BrowserUnavailable("Chromium and its driver are not installed (apt-get install chromium chromium-driver)")
    options = Options()
    options.binary_location = browser
    # No sound card is needed: without one, Chromium plays into a fake output that still runs the clock.
    for arg in ("--headless=new", "--autoplay-policy=no-user-gesture-required", "--no-sandbox",
                "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio", f"--window-size={width},{height}"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(driver))
