"""A real headless Chromium for tests, driven by Selenium through Debian's chromedriver.

Both paths are passed explicitly, so Selenium Manager never looks for (or downloads)
a browser or a driver. Without them the test skips and says what to install.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from selenium.webdriver.chrome.webdriver import WebDriver

INSTALL_HINT = "apt-get install chromium chromium-driver"


def _find(name: str) -> str | None:
    debian = Path("/usr/bin") / name
    return str(debian) if debian.is_file() else shutil.which(name)


@contextmanager
def chromium_driver(tmp_path: Path) -> Iterator[WebDriver]:
    """A headless Chromium 1200 px wide with its own profile under `tmp_path`; quit on exit.
    Skips the test when Chromium, chromedriver or selenium is missing."""
    browser, driver_path = _find("chromium"), _find("chromedriver")
    if browser is None or driver_path is None:
        missing = " and ".join(
            n for n, p in (("chromium", browser), ("chromedriver", driver_path)) if p is None
        )
        pytest.skip(f"{missing} not found: install the Debian packages ({INSTALL_HINT})")
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is in the test extra")

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",  # we may run as root in a container, where the sandbox cannot start
        "--disable-gpu",
        "--disable-dev-shm-usage",  # containers often have a tiny /dev/shm
        "--window-size=1200,2000",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    service = webdriver.ChromeService(
        executable_path=driver_path, log_output=str(tmp_path / "chromedriver.log")
    )
    driver = webdriver.Chrome(options=options, service=service)
    try:
        yield driver
    finally:
        driver.quit()


def full_page_screenshot(driver: WebDriver, path: Path) -> None:
    """The whole page as a PNG, not just the window (through the DevTools protocol)."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    path.write_bytes(base64.b64decode(shot["data"]))
