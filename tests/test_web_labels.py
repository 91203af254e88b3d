"""Custom labels on the web page, in headless Chromium against a real server over a really indexed library:
teach a label from selected results, confirm a borderline image, filter a search by the label."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import BLUE, RED, colour_image, make_colour_library, make_settings, run_index, write_image
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from web_fixtures import cards, is_busy, is_hidden, screenshot, script_errors, serve, text_of, wait_for

from indexer.settings import SearchSettings
from search_api import create_app

pytestmark = pytest.mark.browser

EXTRA_RED = 50  # reds so alike that a label taught from two of them leaves many borderline


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tf1_module: Path) -> Iterator[str]:
    library = make_colour_library(tmp_path_factory.mktemp("web-labels") / "library")
    for i in range(EXTRA_RED):
        write_image(library / "red" / "more" / f"red{6 + i}.jpg",
                    colour_image(RED, seed=200 + i, accent=(230, 40 + i, 40)), quality=90)
    settings = make_settings(tmp_path_factory.mktemp("web-labels-data"), tf1_module)
    report, _ = run_index(settings, library)
    assert report.indexed == 14 + EXTRA_RED
    app = create_app(settings)
    with serve(app) as url:
        yield url
    app.extensions["lookalike.label_jobs"].shutdown()



@pytest.fixture
def page(browser: WebDriver, site: str) -> Iterator[WebDriver]:
    browser.get("about:blank")
    browser.get(site + "/")
    wait_for(browser, lambda d: "indexed" in text_of(d, "stats"), "the library statistics")
    yield browser
    assert script_errors(browser) == []


def api(site: str, path: str, body: dict | None = None) -> Any:
    request = urllib.request.Request(f"{site}/api/v1{path}", data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


def upload(driver: WebDriver, tmp_path: Path, colour: tuple[int, int, int], name: str) -> None:
    path = write_image(tmp_path / name, colour_image(colour, seed=321, accent=(40, 60, 200)), quality=95)
    driver.find_element(By.ID, "file-input").send_keys(str(path))


def settled_cards(driver: WebDriver, what: str, count: int | None = None) -> list[dict]:
    return wait_for(driver, lambda d: not is_busy(d) and (c := cards(d)) and (count is None or len(c) == count)
                    and all(x["loaded"] or not x["inView"] for x in c) and c, what)


def card_state(driver: WebDriver, image_id: int) -> dict:
    return driver.execute_script(
        "const c = document.querySelector(`#results .card[data-id='${arguments[0]}']`);"
        "return c && {classes: Array.from(c.classList), badge: c.querySelector('.card-badge').textContent,"
        " judge: !c.querySelector('.card-judge').hidden};", image_id)


def test_teach_a_label_from_a_selection_confirm_a_borderline_image_and_filter_by_it(
        page: WebDriver, site: str, tmp_path: Path) -> None:
    upload(page, tmp_path, RED, "red-query.jpg")
    found = settled_cards(page, "red lookalikes")
    picked = [c for c in found if "/red/" in c["path"]][:2]
    assert len(picked) == 2
    for card in picked:
        page.find_element(By.CSS_SELECTOR, f"#results .card[data-id='{card['id']}'] .card-check").click()
    wait_for(page, lambda d: text_of(d, "selection-count") == "2 images selected", "the selection bar")
    screenshot(page, "labels-1-selected")
    page.find_element(By.ID, "teach-name").send_keys("warm reds")
    page.find_element(By.ID, "teach-button").click()

    wait_for(page, lambda d: text_of(d, "label-title") == "warm reds" and not is_hidden(d, "label-view"),
             "the new label's page")
    members = settled_cards(page, "the label's images")
    assert is_hidden(page, "selection-bar")  # the selection became the label's examples
    assert "best first" in text_of(page, "results-title")
    label = api(site, "/labels/warm%20reds")
    assert sorted(label["positive_ids"]) == sorted(c["id"] for c in picked)
    listed = api(site, "/labels/warm%20reds/members")["members"]
    assert [c["id"] for c in members] == [m["id"] for m in listed]  # best first, as the server ranks them
    for card in picked:
        assert "example" in card_state(page, card["id"])["classes"]
    near_miss = next(m for m in listed if m["borderline"] and not m["member"])
    state = card_state(page, near_miss["id"])
    assert "borderline" in state["classes"] and state["badge"] == "Borderline: is it?" and state["judge"]
    assert "borderline" in text_of(page, "status") and "warm reds" in text_of(page, "labels-bar")
    screenshot(page, "labels-2-label-page")

    page.find_element(By.CSS_SELECTOR, f"#results .card[data-id='{near_miss['id']}'] .confirm").click()
    wait_for(page, lambda d: not is_busy(d) and "example" in (card_state(d, near_miss["id"]) or {}).get("classes", []),
             "the confirmed image to become an example")
    relearned = api(site, "/labels/warm%20reds")
    assert near_miss["id"] in relearned["positive_ids"] and relearned["count"] >= label["count"]
    assert str(relearned["count"]) in text_of(page, "label-facts").replace(",", "")
    screenshot(page, "labels-3-confirmed")

    page.find_element(By.ID, "label-filter").click()
    wait_for(page, lambda d: text_of(d, "filter-name") == "label:warm reds" and is_hidden(d, "label-view"),
             "the label as the filter")
    upload(page, tmp_path, BLUE, "blue-query.png")
    filtered = settled_cards(page, "blue query filtered by the label")
    have = {i["id"] for i in api(site, "/images?class=label:warm%20reds&limit=500")["images"]}
    assert {c["id"] for c in filtered} <= have and len(filtered) == min(SearchSettings().default_k, relearned["count"])
    assert all("warm reds" in c["labels"] for c in filtered)  # each card shows the custom label
    assert "label:warm reds" in page.current_url.replace("%3A", ":").replace("+", " ").replace("%20", " ")
    screenshot(page, "labels-4-filtered")


def test_suggestions_offer_your_labels_and_a_link_opens_a_label(page: WebDriver, site: str) -> None:
    blues = [i["id"] for i in api(site, "/images?class=jellyfish")["images"]][:2]
    api(site, "/labels", {"name": "deep blue", "positive_ids": blues})
    page.get(site + "/")
    wait_for(page, lambda d: "deep blue" in text_of(d, "labels-bar"), "the labels bar")
    page.find_element(By.ID, "class-input").send_keys("deep")
    wait_for(page, lambda d: d.execute_script(
        "return Array.from(document.querySelectorAll('#class-options [role=option]'))"
        ".some((li) => li.dataset.name === 'label:deep blue' && li.textContent.includes('your label'))"),
        "the label among the suggestions")
    page.get(site + "/#label=deep%20blue")
    wait_for(page, lambda d: text_of(d, "label-title") == "deep blue", "the label page from a link")
    shown = settled_cards(page, "the label's images")
    assert {c["id"] for c in shown} >= set(blues)


def test_teach_a_label_from_a_browsed_class(page: WebDriver, site: str) -> None:
    page.get(site + "/#browse=jellyfish")
    wait_for(page, lambda d: "jellyfish" in text_of(d, "results-title"), "the browsed class")
    browsed = settled_cards(page, "the jellyfish")
    page.find_element(By.CSS_SELECTOR, f"#results .card[data-id='{browsed[0]['id']}'] .card-check").click()
    page.find_element(By.ID, "select-all").click()
    wait_for(page, lambda d: text_of(d, "selection-count") == f"{len(browsed)} images selected", "all selected")
    page.find_element(By.ID, "teach-name").send_keys("sea blue")
    page.find_element(By.ID, "teach-button").click()
    wait_for(page, lambda d: text_of(d, "label-title") == "sea blue", "the new label's page")
    shown = settled_cards(page, "the label's images")
    examples = [c["id"] for c in shown if "example" in card_state(page, c["id"])["classes"]]
    assert sorted(examples) == sorted(c["id"] for c in browsed)
    assert sorted(api(site, "/labels/sea%20blue")["positive_ids"]) == sorted(c["id"] for c in browsed)
    assert "#label=sea" in page.current_url
