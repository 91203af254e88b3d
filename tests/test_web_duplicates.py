"""The Duplicates view of the web page, in headless Chromium against a real server over a really indexed
library: groups side by side with the copy to keep, ticks for removal, and the exported lists."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import BLUE, colour_image, make_colour_library, make_settings, run_index, write_image
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from web_fixtures import PHONE, is_hidden, screenshot, script_errors, serve, text_of, wait_for

from search_api import create_app

pytestmark = pytest.mark.browser

THRESHOLD = 0.999
OLD_NS = 1_400_000_000 * 10**9
COLUMNS = ["path", "id", "kind", "group", "width", "height", "format", "size", "modified", "suggested"]


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The colour library, an older identical copy of red0.jpg and a half-size PNG of blue0.png."""
    root = make_colour_library(tmp_path_factory.mktemp("web-dupes") / "library")
    shutil.copy(root / "red" / "red0.jpg", root / "red" / "red0-copy.jpg")
    os.utime(root / "red" / "red0-copy.jpg", ns=(OLD_NS, OLD_NS))
    write_image(root / "small" / "blue0-small.png", colour_image(BLUE, seed=10, accent=(30, 40, 200)).resize((48, 40)))
    return root


@pytest.fixture(scope="module")
def site(library: Path, tf1_module: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(tmp_path_factory.mktemp("web-dupes-data"), tf1_module,
                             search={"dedupe_threshold": THRESHOLD})
    run_index(settings, library)
    app = create_app(settings)
    with serve(app) as url:
        yield url
    app.extensions["lookalike.label_jobs"].shutdown()



def api(site: str, path: str) -> Any:
    with urllib.request.urlopen(f"{site}/api/v1{path}", timeout=30) as response:
        return json.load(response)


def removals(listing: dict[str, Any], flipped: set[str]) -> set[str]:
    """The paths the export should list: the suggested removals, with the copies whose tick was `flipped`
    (keys as the page names them) the other way round."""
    out = set()
    for group in listing["groups"]:
        if group["kind"] == "exact":
            copies = [(f"exact:{group['image_id']}:{f['path']}", f["suggested"], [f["path"]]) for f in group["files"]]
        else:
            copies = [(f"near:{i['id']}", i["suggested"], i["paths"]) for i in group["images"]]
        for key, suggested, paths in copies:
            if (suggested == "remove") != (key in flipped):
                out.update(paths)
    return out


def downloaded(folder: Path, name: str) -> str:
    """The text of a finished download (Chromium writes .crdownload files until then)."""
    path = folder / name
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if path.exists() and not list(folder.glob("*.crdownload")):
            return path.read_text(encoding="utf-8")
        time.sleep(0.1)
    raise AssertionError(f"{name} was not downloaded to {folder}: {sorted(p.name for p in folder.iterdir())}")


def export(driver: WebDriver, folder: Path, button: str, name: str) -> str:
    for old in folder.glob("*"):
        old.unlink()
    driver.find_element(By.ID, button).click()
    return downloaded(folder, name)


def shown_copies(driver: WebDriver) -> list[dict[str, Any]]:
    return driver.execute_script("""
      return Array.from(document.querySelectorAll('#duplicate-groups .dup-copy')).map((c) => ({
        key: c.dataset.key, group: Number(c.closest('.dup-group').dataset.group),
        kind: c.closest('.dup-group').dataset.kind, keep: c.classList.contains('keep'),
        badge: c.querySelector('.dup-badge').textContent, checked: c.querySelector('.dup-check').checked,
        dims: c.querySelector('.dup-dims').textContent, size: c.querySelector('.dup-size').textContent,
        format: c.querySelector('.dup-format').textContent, paths: c.querySelector('.dup-path').title.split('\\n'),
        loaded: c.querySelector('img').complete && c.querySelector('img').naturalWidth > 0,
        top: c.getBoundingClientRect().top,
        inView: c.getBoundingClientRect().top < window.innerHeight}));""")


def test_review_duplicates_choose_removals_and_export_them(browser: WebDriver, site: str, library: Path,
                                                           tmp_path: Path) -> None:
    files_before = sorted(p for p in library.rglob("*") if p.is_file())
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)})
    browser.get("about:blank")
    browser.get(site + "/")
    wait_for(browser, lambda d: "indexed" in text_of(d, "stats"), "the library statistics")
    browser.find_element(By.ID, "duplicates-link").click()
    listing = api(site, "/duplicates?limit=100")
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#duplicate-groups .dup-group"))
             == listing["total"] and all(c["loaded"] or not c["inView"] for c in shown_copies(d)),
             "the duplicate groups")
    assert browser.current_url.endswith("#duplicates")
    assert is_hidden(browser, "results") is False and not browser.find_element(By.ID, "results").is_displayed()
    assert "1 group of identical files" in text_of(browser, "duplicates-summary")
    assert browser.find_element(By.ID, "duplicates-threshold").get_attribute("value") == str(THRESHOLD)

    copies = shown_copies(browser)
    exact = [c for c in copies if c["kind"] == "exact"]
    assert [(c["paths"][0].endswith("red0-copy.jpg"), c["keep"], c["badge"], c["checked"]) for c in exact] == [
        (True, True, "Suggested keep", False), (False, False, "", True)]  # the older file is the one to keep
    removable = exact[1]
    assert exact[0]["dims"] == "96 × 80" and exact[0]["format"] == "JPEG" and exact[0]["size"].endswith("kB")
    assert exact[0]["top"] == exact[1]["top"]  # side by side
    small = next(c for c in copies if c["paths"][0].endswith("blue0-small.png"))
    big = next(c for c in copies if c["group"] == small["group"] and c["paths"][0].endswith("blue0.png"))
    assert (small["dims"], small["checked"], big["dims"], big["keep"]) == ("48 × 40", True, "96 × 80", True)
    screenshot(browser, "duplicates-1-review")

    # Exported as suggested: every copy but the one to keep, each file once.
    first = json.loads(export(browser, tmp_path, "export-json", "lookalike-removals.json"))
    assert first["threshold"] == THRESHOLD
    assert {r["path"] for r in first["removals"]} == removals(listing, set())
    assert all(list(r) == COLUMNS and r["suggested"] == "remove" for r in first["removals"])

    # Untick the identical copy, tick the small image's keeper too: the lists follow, and a group left
    # with nothing to keep says so.
    changed = {removable["key"], big["key"]}
    for key in changed:
        browser.find_element(By.CSS_SELECTOR, f"#duplicate-groups .dup-copy[data-key='{key}'] .dup-check").click()
    warning = browser.find_element(By.CSS_SELECTOR, f".dup-group[data-group='{big['group']}'] .dup-warning")
    assert warning.is_displayed() and "nothing of it would be left" in warning.text
    rows = list(csv.DictReader(io.StringIO(export(browser, tmp_path, "export-csv", "lookalike-removals.csv"))))
    assert list(rows[0]) == COLUMNS
    assert {r["path"] for r in rows} == removals(listing, changed) != removals(listing, set())
    kept_row = next(r for r in rows if r["path"] == big["paths"][0])
    assert (kept_row["suggested"], kept_row["kind"], kept_row["width"], kept_row["format"]) == (
        "keep", "near", "96", "PNG")
    assert f"{len(rows)} files chosen for removal" in text_of(browser, "duplicates-chosen")
    browser.execute_script("arguments[0].scrollIntoView()", warning)
    screenshot(browser, "duplicates-2-changed")

    # Finding them again starts from the suggestions.
    browser.find_element(By.CSS_SELECTOR, "#duplicates-form button[type=submit]").click()
    suggested_ticks = {c["key"]: c["checked"] for c in copies}
    wait_for(browser, lambda d: {c["key"]: c["checked"] for c in shown_copies(d)} == suggested_ticks,
             "the suggested ticks again")
    assert f"{len(first['removals'])} files chosen" in text_of(browser, "duplicates-chosen")

    browser.back()
    wait_for(browser, lambda d: d.find_element(By.ID, "results-title").is_displayed()
             and not d.find_element(By.ID, "duplicates-view").is_displayed(), "the search view again")
    assert script_errors(browser) == []
    assert sorted(p for p in library.rglob("*") if p.is_file()) == files_before  # nothing was deleted


def test_a_bad_threshold_shows_the_servers_explanation(browser: WebDriver, site: str) -> None:
    browser.get("about:blank")
    browser.get(site + "/#duplicates")
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#duplicate-groups .dup-group"), "the groups")
    browser.execute_script("document.getElementById('duplicates-threshold').value = '0.5';"
                           "document.getElementById('duplicates-threshold').min = '0';")
    browser.find_element(By.CSS_SELECTOR, "#duplicates-form button[type=submit]").click()
    wait_for(browser, lambda d: "from 0.8 to 1" in text_of(d, "error"), "the server's explanation")


def test_phone_width_shows_copies_two_abreast_without_overflow(browser: WebDriver, site: str) -> None:
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    try:
        browser.get("about:blank")
        browser.get(site + "/#duplicates")
        wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#duplicate-groups .dup-group"), "the groups")
        copies = shown_copies(browser)
        assert copies[0]["top"] == copies[1]["top"]
        assert browser.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
        screenshot(browser, "duplicates-3-phone")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_more_groups_load_page_by_page(browser: WebDriver, tf1_module: Path, tmp_path: Path) -> None:
    """22 pairs of identical files: the first 20 groups, then "More groups" shows the last 2."""
    root = tmp_path / "library"
    for i in range(22):
        original = write_image(root / f"p{i:02d}.png", colour_image((10 * i, 255 - 10 * i, 90), seed=i))
        shutil.copy(original, root / f"p{i:02d}-copy.png")
    settings = make_settings(tmp_path / "data", tf1_module, search={"dedupe_threshold": 1.0})
    run_index(settings, root)
    app = create_app(settings)
    with serve(app) as url:
        browser.get("about:blank")
        browser.get(url + "/#duplicates")
        count = "return document.querySelectorAll('#duplicate-groups .dup-group').length"
        wait_for(browser, lambda d: d.execute_script(count) == 20 and not is_hidden(d, "duplicates-more"),
                 "the first page of groups")
        assert "showing 20" in text_of(browser, "duplicates-summary")
        browser.find_element(By.ID, "duplicates-more").click()
        wait_for(browser, lambda d: d.execute_script(count) == 22 and is_hidden(d, "duplicates-more"), "all groups")
        titles = browser.execute_script(
            "return Array.from(document.querySelectorAll('.dup-group-title')).map((t) => t.textContent)")
        assert titles[-1] == "22. Identical files · 2 files"
        assert "22 files chosen for removal" in text_of(browser, "duplicates-chosen")
        assert script_errors(browser) == []
    app.extensions["lookalike.label_jobs"].shutdown()
