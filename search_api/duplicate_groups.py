"""Duplicate groups of the library for the HTTP API, kept between requests.

Finding near-duplicates costs a range search per image (storage.duplicates), so the groups are
found once per threshold and reused while the catalog and the served index generation stay the
same (and for at most MAX_AGE_SECONDS): paging through them costs only the slicing. One request
finds them at a time; the others wait for its answer (at most api.queue_timeout).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import cast

from flask import Flask, current_app, url_for

from search_api.busy import ServerBusy
from search_api.service import SearchService
from storage.duplicates import ExactGroup, NearGroup, exact_groups, files_state, near_groups

MAX_AGE_SECONDS = 60.0
MAX_THRESHOLDS = 4  # listings kept, one per threshold in use


@dataclass(frozen=True)
class Listing:
    """Every group at one threshold: identical files first, then near-duplicates."""

    exact: tuple[ExactGroup, ...]
    near: tuple[NearGroup, ...]

    @property
    def total(self) -> int:
        return len(self.exact) + len(self.near)

    def page(self, offset: int, limit: int) -> list[ExactGroup | NearGroup]:
        groups: list[ExactGroup | NearGroup] = [*self.exact[offset:offset + limit]]
        start = max(0, offset - len(self.exact))
        groups.extend(self.near[start:start + limit - len(groups)])
        return groups


class DuplicateGroups:
    """Shared by the request threads of one worker process."""

    def __init__(self, service: SearchService) -> None:
        self.service = service
        self._listings: OrderedDict[float, tuple[tuple[object, ...], float, Listing]] = OrderedDict()
        self._lock = threading.Lock()

    def _state(self) -> tuple[object, ...]:
        """What the groups depend on: the catalog's files and images, and the served index."""
        svc = self.service
        index = svc.searchable()  # also follows the catalog's tail
        return (*files_state(svc.catalog), svc.generation(), None if index is None else index.count)

    def listing(self, threshold: float) -> Listing:
        """The groups at `threshold`, found again when the library changed since they were."""
        wait = self.service.settings.api.queue_timeout
        if not self._lock.acquire(timeout=wait):
            raise ServerBusy(f"finding duplicates took longer than {wait:g} s (api.queue_timeout); try again")
        try:
            state, now = self._state(), time.monotonic()
            cached = self._listings.get(threshold)
            if cached is not None and cached[0] == state and now - cached[1] < MAX_AGE_SECONDS:
                self._listings.move_to_end(threshold)
                return cached[2]
            listing = self._find(threshold)
            self._listings[threshold] = (state, now, listing)
            while len(self._listings) > MAX_THRESHOLDS:
                self._listings.popitem(last=False)
            return listing
        finally:
            self._lock.release()

    def _find(self, threshold: float) -> Listing:
        svc = self.service
        index = svc.searchable()
        near = near_groups(svc.catalog, index, threshold, svc.index_config) if index is not None else []
        return Listing(tuple(exact_groups(svc.catalog)), tuple(near))


def group_json(group: ExactGroup | NearGroup) -> dict[str, object]:
    """A group as `lookalike duplicates --json` lists it, with its kind and the URLs of its previews."""
    if isinstance(group, ExactGroup):
        return {"kind": "exact", **group.to_json(), **_urls(group.image_id)}
    return {"kind": "near", "keep": group.keep,
            "images": [{**member.to_json(), **_urls(member.image_id)} for member in group.members]}


def _urls(image_id: int) -> dict[str, str]:
    return {"file_url": url_for("images.image_file", image_id=image_id),
            "thumbnail_url": url_for("images.image_thumbnail", image_id=image_id)}


def init_app(app: Flask, service: SearchService) -> None:
    app.extensions["lookalike.duplicate_groups"] = DuplicateGroups(service)


def duplicate_groups() -> DuplicateGroups:
    """The duplicate groups of the app handling the current request."""
    return cast(DuplicateGroups, current_app.extensions["lookalike.duplicate_groups"])
