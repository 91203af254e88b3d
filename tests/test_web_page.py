"""The web page in headless Chromium against a real server over a really indexed library."""

from __future__ import annotations

import base64
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from helpers import BLUE, RED, colour_image, make_colour_library, make_settings, run_index, write_image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from web_fixtures import (
    PHONE,
    cards,
    is_busy,
    is_hidden,
    screenshot,
    script_errors,
    serve,
    text_of,
    wait_for,
)
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from search_api import create_app

pytestmark = pytest.mark.browser

# Extra goldfish beyond the colour library's six, so browsing that class needs a second page of 50.
EXTRA_RED = 50
LIBRARY_SIZE = 14 + EXTRA_RED


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = make_colour_library(tmp_path_factory.mktemp("web") / "library")
    for i in range(EXTRA_RED):
        write_image(root / "red" / "more" / f"red{6 + i}.jpg",
                    colour_image(RED, seed=200 + i, accent=(230, 40 + i, 40)), quality=90)
    return root


@pytest.fixture(scope="module")
def site(library: Path, tf1_module: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = make_settings(tmp_path_factory.mktemp("web-data"), tf1_module)
    report, _ = run_index(settings, library)
    assert report.indexed == LIBRARY_SIZE
    with serve(create_app(settings)) as url:
        yield url



def open_page(driver: WebDriver, url: str) -> WebDriver:
    driver.get("about:blank")  # a fresh document even when only the #fragment would differ
    driver.get(url + "/")
    wait_for(driver, lambda d: "indexed" in text_of(d, "stats"), "the library statistics")
    return driver


@pytest.fixture
def page(browser: WebDriver, site: str) -> Iterator[WebDriver]:
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    yield open_page(browser, site)
    assert script_errors(browser) == []


@pytest.fixture(scope="module")
def queries(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("queries")
    return {
        "red": write_image(folder / "red-query.jpg", colour_image(RED, seed=123, accent=(240, 60, 30)), quality=95),
        "blue": write_image(folder / "blue-query.png", colour_image(BLUE, seed=321, accent=(30, 70, 210))),
        "text": _text_file(folder / "notes.jpg"),
    }


def _text_file(path: Path) -> Path:
    path.write_text("these are notes, not a photo")
    return path


def upload(driver: WebDriver, path: Path) -> None:
    driver.find_element(By.ID, "file-input").send_keys(str(path))


def wait_for_cards(driver: WebDriver, count: int, what: str, all_loaded: bool = True) -> list[dict]:
    """Cards whose thumbnails have all loaded.

    With `all_loaded` False only the thumbnails in view must have loaded: the others of a long
    page load lazily, when scrolled near.
    """
    def settled(card: dict) -> bool:
        return card["loaded"] or card["noPreview"] or not (all_loaded or card["inView"])

    found = wait_for(driver, lambda d: not is_busy(d) and (c := cards(d)) and len(c) == count
                     and all(settled(x) for x in c) and c,
                     f"{count} result cards with settled thumbnails ({what})")
    assert not any(c["noPreview"] for c in found), found  # every image has a WebP thumbnail
    return found


def folder_of(card: dict) -> str:
    """The colour a library file is named after: red, green or blue."""
    return re.match(r"[a-z]+", Path(card["path"]).name).group()  # type: ignore[union-attr]


def choose_class(driver: WebDriver, name: str) -> None:
    box = driver.find_element(By.ID, "class-input")
    box.send_keys(name)
    box.send_keys(Keys.ENTER)


def test_upload_shows_lookalikes_with_scores_and_labels(page: WebDriver, queries: dict[str, Path]) -> None:
    assert text_of(page, "stats").startswith(f"{LIBRARY_SIZE} images indexed")
    assert is_hidden(page, "model-note")
    upload(page, queries["red"])
    found = wait_for_cards(page, 10, "the server's default k")
    assert all(folder_of(c) == "red" for c in found)
    scores = [float(c["score"]) for c in found]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0.9
    for card in found:
        assert card["labels"][0].startswith("goldfish ") and card["labels"][0].endswith("%")
        assert card["src"] == f"/api/v1/images/{card['id']}/thumbnail"
        assert card["href"] == f"/api/v1/images/{card['id']}/file"
    assert text_of(page, "results-title") == "Lookalikes of red-query.jpg"
    assert text_of(page, "query-title") == "Your image: red-query.jpg"
    assert text_of(page, "query-labels").startswith("goldfish")
    assert "10 lookalikes" in text_of(page, "status")
    assert is_hidden(page, "error")
    screenshot(page, "web-page-desktop")
    page.find_element(By.ID, "more-button").click()  # the next page of lookalikes
    both = wait_for_cards(page, 20, "two pages", all_loaded=False)
    assert [c["id"] for c in both[:10]] == [c["id"] for c in found] and len({c["id"] for c in both}) == 20
    assert [float(c["score"]) for c in both] == sorted((float(c["score"]) for c in both), reverse=True)
    assert "20 lookalikes" in text_of(page, "status")


def test_class_filter_shows_only_that_class(page: WebDriver, queries: dict[str, Path]) -> None:
    upload(page, queries["red"])
    wait_for_cards(page, 10, "unfiltered")
    choose_class(page, "jellyfish")
    blue = wait_for(page, lambda d: not is_busy(d) and (c := cards(d)) and all(folder_of(x) == "blue" for x in c) and c,
                    "only jellyfish results")
    assert len(blue) == 5  # every jellyfish in the library, though the query is red
    assert all(c["labels"][0].startswith("jellyfish ") for c in blue)
    assert text_of(page, "filter-name") == "jellyfish" and not is_hidden(page, "filter-chip")
    assert text_of(page, "results-title") == "Lookalikes of red-query.jpg, only jellyfish"
    page.find_element(By.ID, "filter-clear").click()
    again = wait_for(page, lambda d: not is_busy(d) and (c := cards(d)) and all(folder_of(x) == "red" for x in c) and c,
                     "unfiltered results again")
    assert len(again) == 10 and is_hidden(page, "filter-chip")


def test_clicking_a_result_searches_by_it_and_back_returns(page: WebDriver, queries: dict[str, Path]) -> None:
    upload(page, queries["blue"])
    found = wait_for_cards(page, 10, "blue query")
    assert [folder_of(c) for c in found[:5]] == ["blue"] * 5
    clicked = found[5]  # the nearest image that is not blue
    page.find_element(By.CSS_SELECTOR, f'#results .card[data-id="{clicked["id"]}"] .card-search').click()
    title = f"Lookalikes of image #{clicked['id']}"
    wait_for(page, lambda d: text_of(d, "results-title") == title and text_of(d, "status").endswith("search by it"),
             "the search by the clicked image")
    neighbours = wait_for_cards(page, 10, "neighbours of the clicked image")
    assert clicked["id"] not in [c["id"] for c in neighbours]
    assert folder_of(neighbours[0]) == folder_of(clicked)
    assert page.execute_script("return location.hash") == f"#similar={clicked['id']}"
    assert text_of(page, "query-title") == f"Image #{clicked['id']}: {Path(clicked['path']).name}"
    page.back()
    wait_for(page, lambda d: text_of(d, "results-title") == "Lookalikes of blue-query.png", "the upload's results")
    assert folder_of(wait_for_cards(page, 10, "after Back")[0]) == "blue"


def test_a_link_opens_its_view(page: WebDriver, site: str) -> None:
    page.get(f"{site}/#similar=1&class=jellyfish")
    wait_for(page, lambda d: text_of(d, "results-title") == "Lookalikes of image #1, only jellyfish", "the linked view")
    found = wait_for(page, lambda d: not is_busy(d) and cards(d), "the linked view's results")
    assert all(folder_of(c) == "blue" for c in found) and 1 not in [c["id"] for c in found]
    assert text_of(page, "filter-name") == "jellyfish"
    assert text_of(page, "query-title").startswith("Image #1: ")


def test_errors_show_the_servers_explanation(page: WebDriver, queries: dict[str, Path]) -> None:
    upload(page, queries["text"])
    wait_for(page, lambda d: not is_hidden(d, "error"), "an error message")
    assert text_of(page, "error").startswith("Uploaded 'image': not an image")
    assert cards(page) == []
    upload(page, queries["red"])
    wait_for_cards(page, 10, "a good upload after a bad one")
    assert is_hidden(page, "error")
    choose_class(page, "unicorn")
    wait_for(page, lambda d: not is_hidden(d, "error"), "the unknown-class message")
    message = text_of(page, "error")
    assert message.startswith('No class or concept is called "unicorn"'), message
    assert is_hidden(page, "filter-chip")  # an unknown name never leaves a filter behind
    screenshot(page, "web-page-error")


def test_dropping_an_image_searches_by_it(page: WebDriver, queries: dict[str, Path]) -> None:
    data = base64.b64encode(queries["blue"].read_bytes()).decode()
    overlay_shown = page.execute_script("""
        const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'dropped.png', {type: 'image/png'}));
        window.dispatchEvent(new DragEvent('dragenter', {dataTransfer: transfer, bubbles: true}));
        const shown = !document.getElementById('drop-overlay').hidden;
        document.getElementById('drop-zone').dispatchEvent(
            new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));
        return shown;
    """, data)
    assert overlay_shown
    found = wait_for_cards(page, 10, "dropped image")
    assert [folder_of(c) for c in found[:5]] == ["blue"] * 5
    assert text_of(page, "results-title") == "Lookalikes of dropped.png"
    assert is_hidden(page, "drop-overlay")


def test_phone_width_has_no_horizontal_overflow(browser: WebDriver, site: str, queries: dict[str, Path]) -> None:
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True, "maxTouchPoints": 5})
    try:
        page = open_page(browser, site)
        upload(page, queries["red"])
        wait_for_cards(page, 10, "phone")
        choose_class(page, "goldfish")
        wait_for(page, lambda d: "only goldfish" in text_of(d, "results-title"), "the filtered search")
        wait_for_cards(page, 10, "phone, filtered")
        layout = page.execute_script("""
            const viewport = window.innerWidth;
            const rights = Array.from(document.querySelectorAll('body *'))
                .map((el) => el.getBoundingClientRect()).filter((r) => r.width > 0).map((r) => r.right);
            const cards = Array.from(document.querySelectorAll('#results .card'));
            return {viewport, scrollWidth: document.documentElement.scrollWidth,
                    widest: Math.max(...rights),
                    columns: new Set(cards.map((c) => Math.round(c.getBoundingClientRect().left))).size,
                    dropBottom: document.getElementById('drop-zone').getBoundingClientRect().bottom,
                    filterTop: document.getElementById('class-input').getBoundingClientRect().top};
        """)
        assert layout["viewport"] == PHONE["width"]
        assert layout["scrollWidth"] <= layout["viewport"], layout
        assert layout["widest"] <= layout["viewport"] + 0.5, layout
        assert layout["columns"] == 2, layout
        assert layout["dropBottom"] <= layout["filterTop"], layout  # the controls stack in one column
        screenshot(page, "web-page-phone")
        assert script_errors(page) == []
    finally:
        browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": False})
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_a_result_whose_file_is_gone_says_no_preview(browser: WebDriver, tf1_module: Path, tmp_path: Path,
                                                     queries: dict[str, Path]) -> None:
    library = tmp_path / "library"
    write_image(library / "red.jpg", colour_image(RED, seed=1), quality=95)
    gone = write_image(library / "blue.png", colour_image(BLUE, seed=2))
    settings = make_settings(tmp_path / "data", tf1_module)
    assert run_index(settings, library)[0].indexed == 2
    gone.unlink()  # neither a thumbnail nor the original can be served for it now
    shutil.rmtree(settings.storage.data_dir / "thumbnails")
    with serve(create_app(settings)) as url:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        page = open_page(browser, url)
        upload(page, queries["red"])
        found = wait_for(page, lambda d: not is_busy(d) and len(c := cards(d)) == 2
                         and all(x["loaded"] or x["noPreview"] for x in c) and c, "two settled cards")
        assert [(Path(c["path"]).name, c["loaded"], c["noPreview"]) for c in found] == [
            ("red.jpg", True, False), ("blue.png", False, True)]
        assert page.execute_script(
            "return getComputedStyle(document.querySelector('.no-preview .no-preview-text')).display") == "flex"
        assert script_errors(page) == []


def test_stand_in_model_is_announced(browser: WebDriver, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", "package:efficientnet-lite0")
    with serve(create_app(settings)) as url:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        page = open_page(browser, url)
        wait_for(page, lambda d: not is_hidden(d, "model-note"), "the stand-in model notice")
        assert "NOT EfficientNet-B4" in text_of(page, "model-note")
        assert text_of(page, "stats").startswith("0 images indexed")
        assert text_of(page, "results-title").startswith("The library is empty")


SUGGESTIONS_SCRIPT = """
const list = document.getElementById('class-options');
if (list.hidden) return [];
return Array.from(list.querySelectorAll('[role=option]')).map((li) => ({
  name: li.dataset.name,
  kind: (li.querySelector('.kind') || {textContent: 'class'}).textContent,
  count: li.querySelector('.option-count').textContent,
  active: li.getAttribute('aria-selected') === 'true',
}));
"""


def suggestions(driver: WebDriver) -> list[dict]:
    return driver.execute_script(SUGGESTIONS_SCRIPT)


def test_suggestions_pick_a_class_to_browse_page_by_page(page: WebDriver) -> None:
    box = page.find_element(By.ID, "class-input")
    box.send_keys("gold")
    options = wait_for(page, suggestions, "suggestions for 'gold'")
    goldfish = {"name": "goldfish", "kind": "class", "count": f"{EXTRA_RED + 6} images", "active": False}
    assert options[0] == goldfish, options
    assert all("gold" in o["name"] for o in options) and len(options) <= 10
    screenshot(page, "web-page-suggestions")
    box.send_keys(Keys.ARROW_DOWN)
    assert suggestions(page)[0]["active"]
    box.send_keys(Keys.ENTER)
    wait_for(page, lambda d: text_of(d, "filter-name") == "goldfish", "the chosen class")
    assert suggestions(page) == []
    first = wait_for_cards(page, 50, "the first page of goldfish", all_loaded=False)
    assert all(folder_of(c) == "red" and c["score"].endswith("%") for c in first)
    total = EXTRA_RED + 6
    assert text_of(page, "status").startswith(f"Showing 50 of {total} images")
    assert text_of(page, "results-title") == "Images labelled goldfish"
    assert page.execute_script("return location.hash") == "#browse=goldfish"
    screenshot(page, "web-page-browse")
    page.find_element(By.ID, "more-button").click()
    everything = wait_for_cards(page, total, "every goldfish", all_loaded=False)
    assert len({c["id"] for c in everything}) == total
    assert is_hidden(page, "more-button")
    assert text_of(page, "status").startswith(f"Showing {total} of {total} images")


def test_a_concept_filters_search_and_browse(page: WebDriver, queries: dict[str, Path]) -> None:
    box = page.find_element(By.ID, "class-input")
    box.send_keys("fish")
    options = wait_for(page, lambda d: (o := suggestions(d)) and any(x["kind"] == "concept" for x in o) and o,
                       "concept suggestions for 'fish'")
    fish = next(o for o in options if o["name"] == "fish")
    assert fish["kind"] == "concept" and fish["count"] == f"{EXTRA_RED + 6} images"  # the goldfish, not jellyfish
    page.find_element(By.CSS_SELECTOR, '#class-options [data-name="fish"]').click()
    wait_for(page, lambda d: text_of(d, "filter-name") == "fish", "the chosen concept")
    wait_for_cards(page, 50, "fish browsed", all_loaded=False)
    upload(page, queries["blue"])
    wait_for(page, lambda d: text_of(d, "results-title") == "Lookalikes of blue-query.png, only fish",
             "the filtered search")
    found = wait_for_cards(page, 10, "blue query, only fish")
    assert all(folder_of(c) == "red" for c in found)


def test_enter_takes_the_highlighted_suggestion_or_the_first(page: WebDriver) -> None:
    box = page.find_element(By.ID, "class-input")
    box.send_keys("fish")
    options = wait_for(page, lambda d: len(o := suggestions(d)) >= 2 and o, "suggestions for 'fish'")
    second = options[1]["name"]
    ActionChains(page).move_to_element(
        page.find_element(By.CSS_SELECTOR, f'#class-options [data-name="{second}"]')).perform()
    assert suggestions(page)[1]["active"]  # the pointer highlights, as the arrows do
    box.send_keys(Keys.ENTER)
    wait_for(page, lambda d: text_of(d, "filter-name") == second, "the highlighted suggestion as the filter")
    page.find_element(By.ID, "filter-clear").click()
    box.send_keys("goldfi")
    wait_for(page, lambda d: (o := suggestions(d)) and o[0]["name"] == "goldfish", "suggestions for 'goldfi'")
    box.send_keys(Keys.ENTER)
    wait_for(page, lambda d: text_of(d, "filter-name") == "goldfish", "the first suggestion as the filter")


def test_a_link_with_an_unknown_class_leaves_no_chip(page: WebDriver, site: str) -> None:
    page.get(f"{site}/#similar=1&class=unicorn")
    wait_for(page, lambda d: not is_hidden(d, "error"), "the server's unknown-class message")
    assert "unicorn" in text_of(page, "error")
    wait_for(page, lambda d: is_hidden(d, "filter-chip"), "the refused filter removed")


def test_the_placeholder_suggests_classes_of_this_library(page: WebDriver) -> None:
    placeholder = wait_for(page, lambda d: (p := d.find_element(By.ID, "class-input").get_attribute("placeholder"))
                           and "goldfish" in p and p, "a placeholder from the library")
    assert placeholder == "e.g. goldfish, jellyfish, tree frog"


def test_an_empty_filtered_search_says_why_and_offers_the_looser_rule(page: WebDriver,
                                                                        queries: dict[str, Path]) -> None:
    # Tench is among every image's top 5 (with a tiny probability) and no image's top 1.
    choose_class(page, "tench")
    wait_for(page, lambda d: text_of(d, "filter-name") == "tench", "the tench filter")
    upload(page, queries["red"])
    wait_for(page, lambda d: not is_hidden(d, "looser"), "the explanation of the empty result")
    assert text_of(page, "status") == "No image is labelled tench."
    assert text_of(page, "looser-text") == (f"No image shows tench with enough confidence; {LIBRARY_SIZE} images "
                                            "have it among its top 5 predictions below that.")
    screenshot(page, "web-page-empty-filter")
    page.find_element(By.ID, "looser-button").click()
    found = wait_for_cards(page, 10, "results under the looser rule")
    assert all(folder_of(c) == "red" for c in found)
    assert "anywhere in the top 5" in page.find_element(By.ID, "filter-chip").text
    assert is_hidden(page, "looser")


def test_the_page_works_under_a_url_prefix(browser: WebDriver, library: Path, tf1_module: Path,
                                           tmp_path: Path, queries: dict[str, Path]) -> None:
    settings = make_settings(tmp_path / "data", tf1_module)
    run_index(settings, library)
    behind_proxy = DispatcherMiddleware(Flask("elsewhere"), {"/photos": create_app(settings)})
    with serve(behind_proxy) as url:
        open_page(browser, f"{url}/photos")
        assert text_of(browser, "stats").startswith(f"{LIBRARY_SIZE} images indexed")
        upload(browser, queries["blue"])
        found = wait_for_cards(browser, 10, "results served under /photos")
        assert all(c["src"].startswith("/photos/api/v1/images/") for c in found), found[0]
        assert script_errors(browser) == []
