"""A real lookalike server on a loopback port and headless Chromium driven by Selenium, for the page tests."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from helpers import REPO
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import make_server

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPO / "build" / "test-artifacts"

# Nothing leaves the machine: no first-run pages, no component or sync downloads, no QUIC probing.
CHROMIUM_ARGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,900", "--lang=en-US",
)
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}

# The first upload loads the model in the server; later waits are short.
WAIT_SECONDS = 60


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve `app` from a thread on a free loopback port; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="page-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def start_chromium() -> WebDriver:
    """Debian's chromium through its matching chromium-driver (`make test` installs both)."""
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        raise RuntimeError(f"{', '.join(missing)} not found: install them with "
                           "'apt-get install chromium chromium-driver' (make test does this)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in CHROMIUM_ARGS:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], Any], what: str,
             timeout: float = WAIT_SECONDS) -> Any:
    """Wait until `condition` is truthy; on time-out say what was awaited and what the page showed."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)
    except Exception as exc:
        shown = driver.execute_script(
            "return {error: document.getElementById('error').textContent,"
            " status: document.getElementById('status').textContent,"
            " title: document.getElementById('results-title').textContent}")
        raise AssertionError(f"timed out waiting for {what}; the page shows {json.dumps(shown)}") from exc


# One round trip returns what a person sees on each result card.
CARDS_SCRIPT = """
return Array.from(document.querySelectorAll('#results .card')).map((card) => {
  const img = card.querySelector('img');
  return {
    id: Number(card.dataset.id),
    score: card.querySelector('.score').textContent,
    labels: Array.from(card.querySelectorAll('.card-labels .label')).map((l) => l.textContent),
    path: card.querySelector('.card-path').title,
    src: img.getAttribute('src'),
    loaded: img.complete && img.naturalWidth > 0,
    noPreview: card.classList.contains('no-preview'),
    inView: card.getBoundingClientRect().top < window.innerHeight,
    href: card.querySelector('.card-open').getAttribute('href'),
  };
});
"""


def cards(driver: WebDriver) -> list[dict[str, Any]]:
    return driver.execute_script(CARDS_SCRIPT)


def text_of(driver: WebDriver, element_id: str) -> str:
    return driver.execute_script(f"return document.getElementById('{element_id}').textContent").strip()


def is_hidden(driver: WebDriver, element_id: str) -> bool:
    return driver.execute_script(f"return document.getElementById('{element_id}').hidden")


def is_busy(driver: WebDriver) -> bool:
    """True while the page waits for an answer (it shows the previous results, dimmed)."""
    return driver.execute_script("return document.getElementById('results').getAttribute('aria-busy') === 'true'")


def script_errors(driver: WebDriver) -> list[str]:
    """Console errors other than the failed requests the tests cause on purpose (4xx answers)."""
    entries = driver.get_log("browser")
    return [e["message"] for e in entries
            if e["level"] == "SEVERE" and "Failed to load resource: the server responded" not in e["message"]]


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    assert driver.save_screenshot(str(path)), f"could not save {path}"
    return path
