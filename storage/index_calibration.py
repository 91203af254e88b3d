"""Measurements taken when an index is built: whether exact search is cheap enough, how well an
approximate index finds the true neighbours, and how many inverted lists it must visit.

Exact search is timed on a Flat index of the collection itself, built when `auto` could choose it.
Recall is measured on the collection's own vectors: a sample of them serve as queries, their exact
nearest neighbours are found while the index is filled (one pass over the catalog), and an IVF
index gets the smallest `nprobe` whose recall@10 reaches the target. Each query's own vector is
left out of both answers, as a "similar images" query leaves out the image itself, so the figure
is not flattered by the one neighbour every index finds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Protocol

import faiss
import numpy as np

from storage.index_cost import IndexMeasurements, ScanCost, measured_scan_cost
from storage.index_factory import DEFAULT_NPROBE, IndexConfig, exact_is_candidate, ivf_of
from storage.vector_index import VectorIndex

log = logging.getLogger(__name__)

RECALL_K = 10
QUERIES = 200
# Most inverted lists a query may visit: beyond this an IVF index costs about as much as an exact scan.
MAX_NPROBE = 256
# When no nprobe within the bound reaches the target, take the smallest one within this of the best.
PLATEAU = 0.005


class SearchableIndex(Protocol):
    factory: str
    index: faiss.Index

    def search(self, queries: np.ndarray, k: int, allowed_ids: np.ndarray | None = None,
               config: IndexConfig | None = None) -> list[list[tuple[int, float]]]: ...


class RecallProbe:
    """Queries drawn from a collection and their exact nearest neighbours, gathered batch by batch."""

    def __init__(self, query_ids: np.ndarray, queries: np.ndarray, k: int = RECALL_K) -> None:
        self.query_ids = np.asarray(query_ids, dtype=np.int64)
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        width = k + 1  # each query finds itself too
        self._scores = np.full((len(self.query_ids), width), -np.inf, dtype=np.float32)
        self._ids = np.full((len(self.query_ids), width), -1, dtype=np.int64)
        self.seen = 0

    @classmethod
    def sample(cls, batches: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]], count: int,
               queries: int = QUERIES, seed: int = 0) -> RecallProbe:
        """Up to `queries` vectors of a collection of `count`, chosen at random positions of its batches
        (the same ones for the same collection), in one pass."""
        rng = np.random.default_rng(seed)
        wanted = np.sort(rng.choice(count, min(queries, count), replace=False)) if count else np.empty(0, np.int64)
        ids: list[np.ndarray] = []
        vectors: list[np.ndarray] = []
        start = 0
        for batch_ids, batch_vectors in batches():
            inside = wanted[(wanted >= start) & (wanted < start + len(batch_ids))] - start
            ids.append(np.asarray(batch_ids)[inside])
            vectors.append(np.asarray(batch_vectors)[inside])
            start += len(batch_ids)
        if not ids or not sum(len(i) for i in ids):
            return cls(np.empty(0, np.int64), np.empty((0, 0), np.float32))
        return cls(np.concatenate(ids), np.concatenate(vectors))

    def see(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Take a batch of the collection into the exact answers."""
        if len(self.query_ids) == 0 or len(ids) == 0:
            return
        self.seen += len(ids)
        width = self._scores.shape[1]
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        scores, rows = faiss.knn(self.queries, vectors, min(width, len(ids)), metric=faiss.METRIC_INNER_PRODUCT)
        found = np.where(rows >= 0, np.asarray(ids, dtype=np.int64)[np.maximum(rows, 0)], -1)
        all_scores = np.concatenate([self._scores, np.where(rows >= 0, scores, -np.inf)], axis=1)
        all_ids = np.concatenate([self._ids, found], axis=1)
        best = np.argsort(-all_scores, axis=1, kind="stable")[:, :width]
        self._scores = np.take_along_axis(all_scores, best, axis=1)
        self._ids = np.take_along_axis(all_ids, best, axis=1)

    @property
    def usable(self) -> bool:
        return len(self.query_ids) > 0 and self.seen > 1

    def _k(self) -> int:
        return min(self.k, self.seen - 1)

    def truth(self) -> list[set[int]]:
        """Per query, the ids of its k exact nearest neighbours other than itself."""
        k = self._k()
        return [set([int(i) for i in row if i >= 0 and i != own][:k]) for own, row in zip(self.query_ids, self._ids,
                                                                                            strict=True)]

    def recall(self, index: SearchableIndex, config: IndexConfig) -> float:
        """Share of the true neighbours `index` returns among its first k (each query's own id left out)."""
        k = self._k()
        found = index.search(self.queries, k + 1, None, config)
        hits = total = 0
        for own, row, truth in zip(self.query_ids.tolist(), found, self.truth(), strict=True):
            answer = [i for i, _ in row if i != own][:k]
            hits += len(truth.intersection(answer))
            total += len(truth)
        return hits / total if total else 1.0


def is_exact(factory: str) -> bool:
    return factory.replace(" ", "") in ("Flat", "IDMap,Flat", "IDMap2,Flat")


def scan_cost_of(index: VectorIndex, count: int, config: IndexConfig) -> ScanCost | None:
    """The exact scan's cost for deciding on `index`'s collection of `count` vectors: timed on the index
    when it is exact, else from the scan timed when it was built; None when neither is known."""
    if not exact_is_candidate(count, index.dimension, config):
        return None
    if is_exact(index.factory) and index.count:
        return measured_scan_cost(index.index)
    measured = index.measured.exact_scan_ms
    if measured is not None and index.trained_count:
        return ScanCost(measured / index.trained_count, measured=True)
    return None


def measure_index(index: SearchableIndex, probe: RecallProbe | None, config: IndexConfig,
                  exact_scan_ms: float | None) -> IndexMeasurements:
    """Recall of a freshly built index and, for IVF without storage.nprobe, the nprobe that reaches the target."""
    if is_exact(index.factory):
        return IndexMeasurements(0, 1.0, exact_scan_ms)
    if probe is None or not probe.usable:
        return IndexMeasurements(0, None, exact_scan_ms)
    ivf = ivf_of(index.index)
    if ivf is None:
        recall = probe.recall(index, config)
        log.info("%s: recall@10 %.3f on %d queries drawn from the collection", index.factory, recall,
                 len(probe.query_ids))
        return IndexMeasurements(0, recall, exact_scan_ms)
    if config.nprobe:
        recall = probe.recall(index, config)
        log.info("%s: recall@10 %.3f at storage.nprobe %d on %d queries drawn from the collection",
                 index.factory, recall, config.nprobe, len(probe.query_ids))
        return IndexMeasurements(config.nprobe, recall, exact_scan_ms)
    nprobe, recall = choose_nprobe(index, probe, config, int(ivf.nlist))
    return IndexMeasurements(nprobe, recall, exact_scan_ms)


def choose_nprobe(index: SearchableIndex, probe: RecallProbe, config: IndexConfig, nlist: int) -> tuple[int, float]:
    """The smallest nprobe (up to MAX_NPROBE) whose recall@10 reaches config.recall_target, and that recall.

    Recall only grows with nprobe (more lists visited), so doubling finds a bracket and bisection
    the smallest value in it. When the bound falls short, the smallest nprobe within PLATEAU of the
    best recall is taken (visiting more lists would cost time for nothing) and a warning says so.
    """
    tried: dict[int, float] = {}

    def recall_at(nprobe: int) -> float:
        if nprobe not in tried:
            tried[nprobe] = probe.recall(index, replace(config, nprobe=nprobe))
        return tried[nprobe]

    bound = max(1, min(nlist, MAX_NPROBE))
    target = config.recall_target
    high = 1
    while high < bound and recall_at(high) < target:
        high = min(bound, high * 2)
    reached = recall_at(high) >= target
    goal = target if reached else recall_at(bound) - PLATEAU
    low = high // 2 if reached else 0  # recall_at(low) < goal, or low == 0
    if not reached:
        high = bound
    while high - low > 1:
        middle = (low + high) // 2
        if recall_at(middle) >= goal:
            high = middle
        else:
            low = middle
    steps = ", ".join(f"{n}: {r:.3f}" for n, r in sorted(tried.items()))
    if reached:
        log.info("%s: nprobe %d of %d lists gives recall@10 %.3f on %d queries drawn from the collection "
                 "(target %.3f; tried %s)", index.factory, high, nlist, tried[high], len(probe.query_ids), target,
                 steps)
    else:
        # Recall that stops rising long before the bound is capped by the stored codes, not by the lists visited.
        why = ("the compressed vectors cap it: a storage.index_memory_mb that fits float32 vectors lifts it"
               if high * 2 <= bound else
               "the vectors have little cluster structure: storage.index: Flat gives exact answers")
        log.warning("%s: recall@10 reaches only %.3f (target %.3f) even visiting %d of %d lists; using nprobe %d "
                    "(recall %.3f); %s (tried %s)", index.factory, tried[bound], target, bound, nlist, high,
                    tried[high], why, steps)
    return high, tried[high]


def index_summary(factory: str | None, measured: IndexMeasurements, config: IndexConfig) -> dict[str, object]:
    """The index fields `lookalike stats` and /api/v1/stats show: its type, the nprobe searches use and
    where it comes from, the recall measured at build time (None when not measured for that nprobe)."""
    ivf = factory is not None and "IVF" in factory
    nprobe: int | None = None
    source: str | None = None
    recall = measured.recall_at_10
    if ivf and config.nprobe:
        nprobe, source = config.nprobe, "storage.nprobe"
        if config.nprobe != measured.nprobe:
            recall = None
    elif ivf and measured.nprobe:
        nprobe, source = measured.nprobe, "measured"
    elif ivf:
        nprobe, source = DEFAULT_NPROBE, "default"
    return {
        "index_type": factory,
        "nprobe": nprobe,
        "nprobe_source": source,
        "recall_at_10": None if recall is None else round(recall, 4),
        "exact_scan_ms": None if measured.exact_scan_ms is None else round(measured.exact_scan_ms, 4),
        "exact_budget_ms": config.exact_budget_ms,
    }
