"""What a similarity query asks for and what it finds: plain values shared by the engine, the
near-duplicate collapsing and the JSON shaping, so none of them needs to import another."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from storage.catalog import ImageRecord
from storage.class_rule import ClassRule


@dataclass(frozen=True)
class QueryOptions:
    """How one query is filtered and paged; the same for every image of a batch."""

    k: int
    class_ids: Collection[int] | None = None
    min_score: float | None = None
    offset: int = 0
    dedupe: bool = False
    class_rule: ClassRule | None = None  # None: the configured rule
    labels: tuple[int, ...] = ()  # custom labels (class=label:<name>), any of them or of class_ids


@dataclass(frozen=True)
class Neighbour:
    """An indexed image found near a query vector (schemas.Hit describes its JSON)."""

    record: ImageRecord
    score: float
    # With dedupe: ids of the near-duplicate images collapsed into this one (None without dedupe).
    duplicates: tuple[int, ...] | None = None
    custom_labels: tuple[tuple[str, float], ...] = ()  # (name, score) of the custom labels the image has


@dataclass(frozen=True)
class SearchPage:
    """Results offset..offset+k of a query; `next_offset` is None on the last page."""

    hits: list[Neighbour]
    next_offset: int | None
