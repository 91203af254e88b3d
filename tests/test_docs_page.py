"""The API docs page (Swagger UI) works in headless Chromium under the pages' Content-Security-Policy."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from web_fixtures import serve

from indexer.settings import Settings
from search_api import create_app

pytestmark = pytest.mark.browser



def test_swagger_ui_lists_and_runs_the_operations(browser: WebDriver, indexed: Settings) -> None:
    with serve(create_app(indexed)) as url:
        browser.get(f"{url}/api/v1/docs")
        wait = WebDriverWait(browser, 30, poll_frequency=0.1)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 10)
        paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
        assert {"/api/v1/search", "/healthz", "/api/v1/images/{image_id}/similar"} <= paths
        # Try GET /healthz from the page: the request goes to this server, and its answer is shown.
        health = next(e for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-get")
                      if e.find_element(By.CSS_SELECTOR, ".opblock-summary-path").text == "/healthz")
        health.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        wait.until(lambda d: health.find_elements(By.CSS_SELECTOR, ".try-out__btn"))
        health.find_element(By.CSS_SELECTOR, ".try-out__btn").click()
        health.find_element(By.CSS_SELECTOR, ".execute").click()
        wait.until(lambda d: '"status": "ok"' in health.text or '"status":"ok"' in health.text)
        console = browser.get_log("browser")
    refused = [e["message"] for e in console if "Content Security Policy" in e["message"] or "Refused" in e["message"]]
    assert not refused, "\n".join(refused)
    assert not [e["message"] for e in console if e["level"] == "SEVERE"]
