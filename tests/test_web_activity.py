"""The page's progress view, in headless Chromium against a real server: a running index job shows a bar
with its rate and time left, photos that arrive are announced, and the counts refresh without a reload."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import make_colour_library, make_settings, run_index
from selenium.webdriver.remote.webdriver import WebDriver
from web_fixtures import is_hidden, screenshot, script_errors, serve, text_of, wait_for

from indexer.index_jobs import JobProgress, new_job
from indexer.settings import Settings
from indexer.watch_status import remove_status, write_status
from search_api import create_app
from storage.lock import watch_lock

pytestmark = pytest.mark.browser


@pytest.fixture
def site(tmp_path: Path, tf1_module: Path) -> Iterator[tuple[str, Settings, Path]]:
    library = make_colour_library(tmp_path / "library")
    settings = make_settings(tmp_path / "data", tf1_module, indexer={"roots": [str(library)]})
    app = create_app(settings)
    with serve(app) as url:
        yield url, settings, library
    app.extensions["lookalike.label_jobs"].shutdown()


def test_the_page_shows_a_running_job_then_announces_the_new_photos(site: tuple[str, Settings, Path],
                                                                    browser: WebDriver) -> None:
    url, settings, library = site
    data = settings.storage.data_dir
    browser.get(url + "/")
    wait_for(browser, lambda d: "0 images indexed" in text_of(d, "stats"), "the empty library's counts")
    assert is_hidden(browser, "activity")

    progress = JobProgress(data, new_job(data, [str(library)]))  # what `lookalike index --job` writes
    progress.start(total=14, found=14)
    for _ in range(14):
        progress.advance("indexed")
    wait_for(browser, lambda d: not is_hidden(d, "activity"), "the job's progress", timeout=15)
    text = text_of(browser, "activity-text")
    assert "14 of 14 files" in text and "images/s" in text and "finishing" in text, text
    bar = browser.execute_script("const b = document.getElementById('activity-bar');"
                                 "return {hidden: b.hidden, value: b.value, max: b.max};")
    assert bar == {"hidden": False, "value": 14, "max": 14}
    screenshot(browser, "activity-job")

    run_index(settings, library)
    progress.finish({"indexed": 14})
    wait_for(browser, lambda d: "14 images indexed" in text_of(d, "stats"), "the counts to refresh", timeout=15)
    assert text_of(browser, "activity-news") == "14 new photos indexed"
    assert "library is empty" not in text_of(browser, "results-title")
    wait_for(browser, lambda d: is_hidden(d, "activity"), "the finished job to leave the header", timeout=15)

    with watch_lock(data):
        write_status(data, {"roots": [str(library)], "vanished": [], "waiting": 3, "lag_seconds": 0.5,
                            "totals": {"indexed": 0, "removed": 0}})
        wait_for(browser, lambda d: "Watching 1 folder" in text_of(d, "activity-text"), "the watcher", timeout=15)
        assert "3 files being written" in text_of(browser, "activity-text")
        assert is_hidden(browser, "activity-bar")
        remove_status(data)
    assert script_errors(browser) == []
