"""Image counts of classes and concepts for autocompletion, kept between requests.

Loading the matching (image, class) pairs is the costly part (a scan of the predictions);
the loaded table is reused while the catalog holds the same images, and for at most
MAX_AGE_SECONDS, so each keystroke of an autocomplete costs only the counting.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import cast

from flask import Flask, current_app

from search_api.service import SearchService
from storage.browse import MatchTable
from storage.class_rule import ClassRule

MAX_AGE_SECONDS = 60.0
MAX_RULES = 4  # tables kept, one per class rule in use


class ClassCounts:
    """Shared by the request threads of one worker process."""

    def __init__(self, service: SearchService) -> None:
        self.service = service
        self._tables: OrderedDict[ClassRule, tuple[tuple[int, int], float, MatchTable]] = OrderedDict()
        self._lock = threading.Lock()

    def table(self, rule: ClassRule) -> MatchTable:
        """The match table for `rule`, reloaded when images were added or removed since it was read."""
        catalog = self.service.catalog
        state = (catalog.count_images(), catalog.max_image_id())
        now = time.monotonic()
        with self._lock:
            cached = self._tables.get(rule)
            if cached is not None and cached[0] == state and now - cached[1] < MAX_AGE_SECONDS:
                self._tables.move_to_end(rule)
                return cached[2]
        table = MatchTable.load(catalog, rule)
        with self._lock:
            self._tables[rule] = (state, now, table)
            self._tables.move_to_end(rule)
            while len(self._tables) > MAX_RULES:
                self._tables.popitem(last=False)
        return table


def init_app(app: Flask, service: SearchService) -> None:
    app.extensions["lookalike.class_counts"] = ClassCounts(service)


def class_counts() -> ClassCounts:
    """The class counts of the app handling the current request."""
    return cast(ClassCounts, current_app.extensions["lookalike.class_counts"])
