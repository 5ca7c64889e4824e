"""Headless Chromium for the browser tests, driven by Selenium through Debian's chromedriver.

``chromium`` and ``chromium-driver`` come from apt at the same version, and the driver is named
explicitly, so Selenium never tries to download one (there may be no internet). A test that needs
the browser skips with the reason when the Python package, the browser or the driver is missing.
The wrapper only keeps what the tests would otherwise repeat: viewport coordinates for the mouse,
bounded waits on a JavaScript condition, and screenshots as arrays. Selenium is imported only
once a browser is wanted, so the other tests of the files that use this module run without it.
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
]


def _which(names: tuple[str, ...], extra: tuple[str, ...] = ()) -> str | None:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    return next((p for p in extra if Path(p).is_file()), None)


def chromium_or_skip() -> tuple[str, str]:
    """The browser and the driver to use, or a skip that says what to install."""
    pytest.importorskip("selenium", reason="selenium is not installed (pip install -e '.[dev]')")
    browser = _which(("chromium", "chromium-browser", "google-chrome"))
    if browser is None:
        pytest.skip("no chromium installed (apt-get install chromium chromium-driver)")
    driver = _which(("chromedriver",), ("/usr/lib/chromium/chromedriver",))
    if driver is None:
        pytest.skip("no chromedriver installed (apt-get install chromium-driver)")
    return browser, driver


class Chromium:
    """One headless Chromium with one page of ``width`` x ``height`` CSS pixels."""

    def __init__(self, profile: Path, width: int = 1200, height: int = 900, timeout: float = 30.0) -> None:
        browser, driver = chromium_or_skip()
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        profile.mkdir(parents=True, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        service = Service(executable_path=driver, log_output=str(profile / "chromedriver.log"))
        self.driver = webdriver.Chrome(options=options, service=service)
        try:
            self.driver.set_page_load_timeout(timeout)
            self.driver.set_script_timeout(timeout)
            # --window-size counts a window frame that headless Chromium still reserves: set the page's
            # own size, so that every screenshot is width x height (cheaper than resizing the window)
            self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                                        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
        except BaseException:
            self.close()
            raise

    def navigate(self, url: str) -> None:
        self.driver.get(url)  # returns once the document is complete (page load strategy "normal")

    def js(self, expression: str) -> Any:
        """The value of a JavaScript expression; a promise is awaited (WebDriver's execute script)."""
        return self.driver.execute_script(f"return ({expression}\n);")

    def wait_for(self, expression: str, timeout: float = 30.0) -> Any:
        """Poll until the expression is truthy; a bounded wait that names the condition when it fails."""
        from selenium.webdriver.support.ui import WebDriverWait

        return WebDriverWait(self.driver, timeout, poll_frequency=0.05).until(
            lambda _: self.js(expression), f"waited {timeout} s for: {expression}")

    def screenshot(self) -> np.ndarray:
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(self.driver.get_screenshot_as_png())).convert("RGB"))

    def _press_along(self, path: list[tuple[float, float]]) -> None:
        """Real pointer events: the left button pressed at the start of ``path`` (viewport pixels),
        moved along it and released at its end."""
        from selenium.webdriver.common.actions.action_builder import ActionBuilder

        actions = ActionBuilder(self.driver, duration=0)
        pointer = actions.pointer_action
        (x0, y0), rest = path[0], path[1:]
        pointer.move_to_location(round(x0), round(y0)).pointer_down()
        for x, y in rest:
            pointer.move_to_location(round(x), round(y))
        pointer.pointer_up()
        actions.perform()

    def drag(self, x0: float, y0: float, x1: float, y1: float, steps: int = 5) -> None:
        """A left-button drag with real mouse events, as a person's hand would make it."""
        self._press_along([(x0 + (x1 - x0) * i / steps, y0 + (y1 - y0) * i / steps) for i in range(steps + 1)])

    def click(self, x: float, y: float) -> None:
        self._press_along([(x, y)])

    def box(self, selector: str) -> dict:
        """The viewport rectangle of the first element matching ``selector`` (scrolled into view)."""
        return self.driver.execute_script(
            "const e = document.querySelector(arguments[0]); e.scrollIntoView({block: 'center'});"
            " const r = e.getBoundingClientRect(); return {x: r.x, y: r.y, width: r.width, height: r.height};",
            selector)

    def set_files(self, selector: str, files: list[str]) -> None:
        from selenium.webdriver.common.by import By

        self.driver.find_element(By.CSS_SELECTOR, selector).send_keys("\n".join(files))

    def close(self) -> None:
        self.driver.quit()


def not_blank(img: np.ndarray, min_std: float = 10.0) -> bool:
    """A screenshot shows something: its pixels vary (a blank or single-colour page does not)."""
    return float(img.astype(np.float64).std()) > min_std
