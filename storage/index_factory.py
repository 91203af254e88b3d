"""Which FAISS index suits a collection, how to build it with catalog ids, and per-call search parameters.

In the spirit of autofaiss: exact search while it is cheap (one query's scan, timed on this
machine, within storage.exact_budget_ms); an inverted file (IVF) above that;
scalar quantisation (SQ8, 4x smaller) when full vectors would not fit the memory budget; and
OPQ + product quantisation when even SQ8 would not. At 1792 dimensions IVF+SQ8 keeps recall
near 0.99 at a quarter of the memory, while HNSW builds slowly and recalls less, so `auto`
never picks HNSW (it stays available as an explicit factory string).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass

import faiss
import numpy as np

from storage.index_config import IndexConfig
from storage.index_cost import ScanCost, modelled_scan_cost

__all__ = ["IndexConfig"]  # defined apart (no FAISS import) and used here

log = logging.getLogger(__name__)

PQ_SUBQUANTIZERS = (8, 16, 32, 48, 56, 64, 96, 112, 128, 192, 224, 256)
# Inverted lists visited per query by an IVF index whose generation records no measured nprobe.
DEFAULT_NPROBE = 16


@dataclass(frozen=True)
class IndexPlan:
    factory: str
    reason: str
    exact_scan_ms: float | None = None  # one query's exact scan of the collection, as measured here


def nlist_for(count: int) -> int:
    """About 4*sqrt(n) inverted lists, with at least 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(count)), count // 39))


def exact_is_candidate(count: int, dimension: int, config: IndexConfig) -> bool:
    """Whether `auto` would search `count` vectors exactly if the scan were cheap enough; only then
    does the scan's cost decide."""
    return (config.factory == "auto" and nlist_for(count) >= 2 and count <= config.exact_max_vectors
            and count * dimension * 4 <= config.memory_budget_bytes)


def choose_index(count: int, dimension: int, config: IndexConfig, scan_cost: ScanCost | None = None) -> IndexPlan:
    """The factory string for `count` vectors of `dimension`, and why.

    Exact search while one query's scan stays within config.exact_budget_ms (`scan_cost`: timed on
    the collection by the caller, else a conservative model), the collection within
    config.exact_max_vectors and its vectors within the memory budget; otherwise an inverted file,
    quantised when full vectors do not fit.
    """
    if config.factory != "auto":
        return IndexPlan(config.factory, "set in storage.index")
    budget = config.memory_budget_bytes
    flat = count * dimension * 4
    mib = 2**20
    nlist = nlist_for(count)
    if nlist < 2:
        return IndexPlan("Flat", f"{count:,} vectors are too few to train an inverted file: exact search")
    scan_ms: float | None = None
    if exact_is_candidate(count, dimension, config):
        cost = scan_cost or modelled_scan_cost(dimension)
        scan_ms = cost.ms(count)
        limit = f"storage.exact_budget_ms ({config.exact_budget_ms:g} ms)"
        if scan_ms <= config.exact_budget_ms:
            return IndexPlan("Flat", f"{cost.describe(count)}, within {limit}: exact search", scan_ms)
        why = f"{cost.describe(count)}, over {limit}"
    elif count > config.exact_max_vectors:
        why = f"{count:,} vectors > storage.exact_max_vectors ({config.exact_max_vectors:,})"
    else:
        why = f"{flat / mib:,.0f} MiB of float32 vectors exceed the {budget / mib:,.0f} MiB budget"
    if flat * 1.05 <= budget:
        return IndexPlan(f"IVF{nlist},Flat", f"{why}: IVF with full vectors ({flat / mib:,.0f} MiB fit the "
                                             "memory budget)", scan_ms)
    if count * dimension * 1.05 <= budget:
        return IndexPlan(f"IVF{nlist},SQ8", f"{why}: IVF with 8-bit scalar quantisation ({flat / mib:,.0f} MiB "
                                            f"of float32 vectors exceed the {budget / mib:,.0f} MiB budget)", scan_ms)
    per_vector = budget / max(count, 1)
    fitting = [m for m in PQ_SUBQUANTIZERS if dimension % m == 0 and m * 1.1 <= per_vector] or [8]
    m = fitting[-1]
    return IndexPlan(f"OPQ{m},IVF{nlist},PQ{m}", f"{why}: OPQ + {m}-byte product codes (even 8-bit vectors "
                                                 f"exceed the {budget / mib:,.0f} MiB budget)", scan_ms)


def is_exact(factory: str) -> bool:
    """Whether the index keeps the vectors themselves (Flat, IVF-Flat, HNSW-Flat), not quantised codes."""
    return re.search(r"SQ|PQ|LSH|RQ|RaBitQ", factory) is None


def ivf_of(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def hnsw_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    inner = faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def new_index(factory: str, dimension: int) -> faiss.Index:
    """An empty index that accepts catalog ids: IVF indexes take ids directly (with a hash-table
    direct map, so removals work); everything else is wrapped in an IndexIDMap2."""
    try:
        index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise ValueError(f"storage.index {factory!r} is not a FAISS factory string FAISS understands: {exc}") from None
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # type: ignore[attr-defined]  # not in faiss's stubs
        return index
    return faiss.IndexIDMap2(index)


def stored_ids(index: faiss.Index) -> np.ndarray:
    """Every id in the index."""
    if isinstance(index, faiss.IndexIDMap):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    ivf = ivf_of(index)
    if ivf is None:
        raise TypeError(f"cannot list the ids of a {type(index).__name__}")
    lists = ivf.invlists
    if lists is None:
        raise TypeError(f"{type(ivf).__name__} has no inverted lists")
    parts = []
    for list_no in range(ivf.nlist):
        size = lists.list_size(list_no)
        if size:
            parts.append(faiss.rev_swig_ptr(lists.get_ids(list_no), size).copy())
    return np.concatenate(parts).astype(np.int64) if parts else np.empty(0, np.int64)


def search_parameters(index: faiss.Index, config: IndexConfig, k: int, selector: faiss.IDSelector | None,
                      selectivity: float) -> faiss.SearchParameters:
    """Per-call parameters (never mutating the shared index). A selective filter widens the search:
    IVF visits proportionally more lists (all of them below 1/nprobe selectivity, where the selector
    check is cheaper than a distance), HNSW keeps a proportionally longer candidate list."""
    ivf = ivf_of(index)
    params: faiss.SearchParameters
    if ivf is not None:
        params = ivf_params = faiss.SearchParametersIVF()
        nprobe = config.nprobe or DEFAULT_NPROBE
        widened = math.ceil(nprobe / max(selectivity, 1e-9))
        ivf_params.nprobe = int(min(ivf.nlist, max(nprobe, widened)))
    elif hnsw_of(index) is not None:
        params = hnsw_params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # not in faiss's stubs
        hnsw_params.efSearch = int(min(16_384, max(config.ef_search, k, math.ceil(config.ef_search / max(selectivity,
                                                                                                  1e-9)))))
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params
