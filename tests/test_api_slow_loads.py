"""A slow model load or index load holds up only the requests that need the model or the index.

A worker's first query loads the model (seconds for B4) and a new index generation can take as
long to load: requests that only read the catalog (stats, image details, browsing) must answer
meanwhile. The loads here are the real ones, held at their start until the probe has answered.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from flask import Flask
from helpers import RED, colour_image, jpeg, search

from indexer.model import Embedder
from storage.vector_index import IndexStore

PROBE_SECONDS = 20.0  # far above an unhindered answer, far below the held load


class HeldLoad:
    """Wraps a real loader: each call signals that it started, then waits until released."""

    def __init__(self, load: Callable[..., Any]) -> None:
        self.load = load
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.started.set()
        self.release.wait(120)
        return self.load(*args, **kwargs)


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    answers: list[Any] = []
    thread = threading.Thread(target=lambda: answers.append(call()), daemon=True)
    thread.start()
    return thread, answers


def answers_while_held(held: HeldLoad, slow: Callable[[], Any], probe: Callable[[], Any]) -> tuple[Any, Any]:
    """Start `slow` (which runs the held load), then `probe`; the probe's answer, or None if it waited."""
    loader, loaded = in_thread(slow)
    try:
        assert held.started.wait(60), "the slow request never reached the load"
        prober, probed = in_thread(probe)
        prober.join(PROBE_SECONDS)
        answer = probed[0] if probed else None
        assert not held.release.is_set()
    finally:
        held.release.set()
        loader.join(120)
    if not probed:
        prober.join(60)
    return answer, loaded[0] if loaded else None


@pytest.fixture
def held_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldLoad]:
    held = HeldLoad(Embedder.from_settings)
    monkeypatch.setattr(Embedder, "from_settings", staticmethod(held))
    yield held
    held.release.set()


@pytest.fixture
def held_index(monkeypatch: pytest.MonkeyPatch) -> Iterator[HeldLoad]:
    held = HeldLoad(IndexStore.load)
    monkeypatch.setattr(IndexStore, "load", lambda store, *args, **kwargs: held(store, *args, **kwargs))
    yield held
    held.release.set()


def test_a_loading_model_does_not_hold_up_stats(app: Flask, held_model: HeldLoad) -> None:
    stats, searched = answers_while_held(
        held_model,
        # Not the bytes of an indexed photo (colour_image(RED) is red0.jpg's): those answer from the catalog.
        lambda: search(app.test_client(), jpeg(colour_image(RED, seed=99))),
        lambda: app.test_client().get("/api/v1/stats"))
    assert stats is not None, f"/api/v1/stats waited over {PROBE_SECONDS} s for the model to load"
    assert stats.status_code == 200 and stats.get_json()["images"] == 14
    assert searched.status_code == 200 and searched.get_json()["results"]


def test_a_loading_index_does_not_hold_up_catalog_reads(app: Flask, held_index: HeldLoad) -> None:
    details, stats = answers_while_held(
        held_index,
        lambda: app.test_client().get("/api/v1/stats"),
        lambda: app.test_client().get("/api/v1/images/1"))
    assert details is not None, f"/api/v1/images/1 waited over {PROBE_SECONDS} s for the index to load"
    assert details.status_code == 200 and details.get_json()["id"] == 1
    assert stats.status_code == 200 and stats.get_json()["vectors"] == 14
