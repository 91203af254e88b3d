"""Signing in on the web page of a server that needs keys, in headless Chromium against a real server:
a sign-in box first, an HttpOnly session after, and only what the key may do on show."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import RED, catalog_of, colour_image, make_colour_library, make_settings, run_index, write_image
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from web_fixtures import cards, is_busy, is_hidden, screenshot, script_errors, serve, text_of, wait_for

from search_api import create_app
from storage.api_keys import ApiKeys

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site_and_keys(tmp_path_factory: pytest.TempPathFactory, tf1_module: Path) -> Iterator[tuple[str, dict[str, str]]]:
    library = make_colour_library(tmp_path_factory.mktemp("web-sign-in") / "library")
    settings = make_settings(tmp_path_factory.mktemp("web-sign-in-data"), tf1_module, api={"auth": "keys"})
    report, _ = run_index(settings, library)
    assert report.indexed == 14
    catalog = catalog_of(settings)
    try:
        secrets = {scope: ApiKeys(catalog).create(f"{scope}-key", scope) for scope in ("read", "write")}
    finally:
        catalog.close()
    app = create_app(settings)
    with serve(app) as url:
        yield url, secrets
    app.extensions["lookalike.label_jobs"].shutdown()


def displayed(driver: WebDriver, selector: str) -> bool:
    return bool(driver.execute_script(
        "const e = document.querySelector(arguments[0]); return !!e && getComputedStyle(e).display !== 'none'"
        " && !e.closest('[hidden]');", selector))


def sign_in(driver: WebDriver, key: str) -> None:
    box = driver.find_element(By.ID, "sign-in-key")
    box.clear()
    box.send_keys(key)
    driver.find_element(By.ID, "sign-in-button").click()


def search_red(driver: WebDriver, tmp_path: Path) -> list[dict]:
    query = write_image(tmp_path / "red-query.jpg", colour_image(RED, seed=321, accent=(240, 60, 30)), quality=95)
    driver.find_element(By.ID, "file-input").send_keys(str(query))
    return wait_for(driver, lambda d: not is_busy(d) and (c := cards(d)) and all(x["loaded"] for x in c) and c,
                    "result cards with their thumbnails")


def test_sign_in_shows_what_the_key_may_do(browser: WebDriver, site_and_keys: tuple[str, dict[str, str]],
                                           tmp_path: Path) -> None:
    site, secrets = site_and_keys
    browser.get("about:blank")
    browser.get(site + "/")
    wait_for(browser, lambda d: not is_hidden(d, "sign-in"), "the sign-in box")
    assert not displayed(browser, "main") and "indexed" not in text_of(browser, "stats")
    screenshot(browser, "sign-in-1-box")

    sign_in(browser, "lookalike_wrong")
    wait_for(browser, lambda d: not is_hidden(d, "sign-in-error"), "the refusal")
    assert "not valid" in text_of(browser, "sign-in-error")

    sign_in(browser, secrets["read"])
    wait_for(browser, lambda d: "indexed" in text_of(d, "stats"), "the library statistics")
    assert is_hidden(browser, "sign-in") and "read-key" in text_of(browser, "whoami")
    assert browser.execute_script("return document.cookie") == ""  # the session cookie is HttpOnly
    session = browser.get_cookie("lookalike_session")
    assert session is not None and session["httpOnly"] and session["sameSite"] == "Strict"
    assert secrets["read"] not in session["value"]
    found = search_red(browser, tmp_path)
    assert found and all(c["loaded"] for c in found)  # thumbnails come with the cookie
    assert not displayed(browser, "#results .card .card-select")  # a read key cannot teach labels
    assert not displayed(browser, "#teach-form")
    screenshot(browser, "sign-in-2-read")

    browser.refresh()  # the session outlives the page
    wait_for(browser, lambda d: "indexed" in text_of(d, "stats"), "the statistics after a reload")
    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, lambda d: not is_hidden(d, "sign-in"), "the sign-in box after signing out")
    assert browser.get_cookie("lookalike_session") is None

    sign_in(browser, secrets["write"])
    wait_for(browser, lambda d: "indexed" in text_of(d, "stats"), "the statistics for the write key")
    found = search_red(browser, tmp_path)
    assert displayed(browser, "#results .card .card-select")
    # A change made through the page (teaching a label) passes the CSRF check.
    picked = [c for c in found if "/red/" in c["path"]][:2]
    for card in picked:
        check = browser.find_element(By.CSS_SELECTOR, f"#results .card[data-id='{card['id']}'] .card-check")
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", check)
        check.click()
    browser.find_element(By.ID, "teach-name").send_keys("reds")
    browser.find_element(By.ID, "teach-button").click()
    wait_for(browser, lambda d: text_of(d, "label-title") == "reds" and not is_hidden(d, "label-view"),
             "the new label's page")
    screenshot(browser, "sign-in-3-write")

    # Add a photo to the library, find it among the results, remove it again.
    photo = write_image(tmp_path / "new photo.jpg", colour_image((150, 40, 200), seed=9), quality=95)
    browser.find_element(By.ID, "add-input").send_keys(str(photo))
    wait_for(browser, lambda d: "Added new photo.jpg" in text_of(d, "status"), "the added photo")
    added = int(text_of(browser, "status").split("#")[1].split(";")[0])
    assert text_of(browser, "query-title").startswith(f"Image #{added}")
    api_url = f"{site}/api/v1/images/{added}"
    assert browser.execute_script("return fetch(arguments[0]).then((r) => r.status)", api_url) == 200
    search_red(browser, tmp_path)
    red_cards = cards(browser)
    for shown in red_cards:  # library images cannot be removed from the page; the added one can
        removable = displayed(browser, f"#results .card[data-id='{shown['id']}'] .card-remove")
        assert removable == (shown["id"] == added)
    browser.find_element(By.ID, "file-input").send_keys(str(photo))  # searching by it finds it first
    wait_for(browser, lambda d: not is_busy(d) and (c := cards(d)) and c[0]["id"] == added, "the added photo found")
    remove = browser.find_element(By.CSS_SELECTOR, f"#results .card[data-id='{added}'] .card-remove")
    browser.execute_script("arguments[0].scrollIntoView({block: 'center'})", remove)
    remove.click()
    browser.switch_to.alert.accept()
    wait_for(browser, lambda d: all(c["id"] != added for c in cards(d)), "the removed card to go")
    assert browser.execute_script("return fetch(arguments[0]).then((r) => r.status)", api_url) == 404
    screenshot(browser, "sign-in-4-added-removed")
    assert script_errors(browser) == []


def test_a_read_key_sees_no_add_to_library(browser: WebDriver, site_and_keys: tuple[str, dict[str, str]]) -> None:
    site, secrets = site_and_keys
    browser.delete_all_cookies()
    browser.get("about:blank")
    browser.get(site + "/")
    wait_for(browser, lambda d: not is_hidden(d, "sign-in"), "the sign-in box")
    sign_in(browser, secrets["read"])
    wait_for(browser, lambda d: "indexed" in text_of(d, "stats"), "the library statistics")
    assert not displayed(browser, "#add-zone") and displayed(browser, "#drop-zone")


DROP_ON_ADD_ZONE = """
const canvas = document.createElement("canvas");
canvas.width = canvas.height = 64;
const paint = canvas.getContext("2d");
paint.fillStyle = "rgb(40, 200, 170)";
paint.fillRect(0, 0, 64, 64);
paint.fillStyle = "rgb(250, 250, 20)";
paint.fillRect(10, 10, 20, 30);
canvas.toBlob((blob) => {
  const moved = new DataTransfer();
  moved.items.add(new File([blob], "dropped.png", {type: "image/png"}));
  document.getElementById("add-zone").dispatchEvent(
    new DragEvent("drop", {dataTransfer: moved, bubbles: true, cancelable: true}));
}, "image/png");
"""


def test_a_photo_dropped_on_add_to_library_is_added_and_can_be_removed(
        browser: WebDriver, site_and_keys: tuple[str, dict[str, str]]) -> None:
    site, secrets = site_and_keys
    browser.delete_all_cookies()
    browser.get("about:blank")
    browser.get(site + "/")
    wait_for(browser, lambda d: not is_hidden(d, "sign-in"), "the sign-in box")
    sign_in(browser, secrets["write"])
    wait_for(browser, lambda d: "indexed" in text_of(d, "stats") and displayed(d, "#add-zone"), "the add zone")
    browser.execute_script(DROP_ON_ADD_ZONE)
    wait_for(browser, lambda d: "Added dropped.png" in text_of(d, "status"), "the dropped photo added")
    added = int(text_of(browser, "status").split("#")[1].split(";")[0])
    api_url = f"{site}/api/v1/images/{added}"
    assert browser.execute_script("return fetch(arguments[0]).then((r) => r.status)", api_url) == 200
    # With the cookie alone (no CSRF token) a removal is refused; with the session's token it goes.
    refused = browser.execute_script(
        "return fetch(arguments[0], {method: 'DELETE'}).then((r) => r.status)", api_url)
    assert refused == 403
    status = browser.execute_script(
        "return fetch('/api/v1/session').then((r) => r.json()).then((s) => fetch(arguments[0], "
        "{method: 'DELETE', headers: {'X-CSRF-Token': s.csrf_token}})).then((r) => r.status)", api_url)
    assert status == 204
    assert browser.execute_script("return fetch(arguments[0]).then((r) => r.status)", api_url) == 404
    assert script_errors(browser) == []
