"""The FAISS index: unit vectors keyed by catalog image ids, inner product = cosine similarity.

It is a derived cache of the catalog's embeddings. Files are published as numbered
generations (temp file, fsync, rename) followed by a manifest written the same way, so a
crash at any point leaves the previous generation readable.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import faiss
import numpy as np

from storage.faults import fault_point
from storage.index_cost import IndexMeasurements, single_query_threads
from storage.index_factory import DEFAULT_NPROBE, IndexConfig, new_index, search_parameters, stored_ids

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"


class IndexMismatchError(RuntimeError):
    """The index was built for another model or dimension than the one in use."""


@dataclass(frozen=True)
class Manifest:
    generation: int
    file: str
    count: int
    dimension: int
    model_id: str
    high_water: int  # largest catalog image id the generation covers
    created_at: float
    factory: str = "Flat"
    trained_count: int = 0  # vectors the index was trained on (0: needs no training)
    # Measured when the index was built (absent from manifests written before they were measured).
    nprobe: int = 0
    recall_at_10: float | None = None
    exact_scan_ms: float | None = None

    def measurements(self) -> IndexMeasurements:
        return IndexMeasurements(self.nprobe, self.recall_at_10, self.exact_scan_ms)


class IndexWriteError(RuntimeError):
    """A new generation could not be written (disk full, I/O error); the previous one stays current."""


class RemoveUnsupportedError(RuntimeError):
    """The index type cannot delete vectors (HNSW); it has to be rebuilt from the catalog."""


class VectorIndex:
    """Inner-product search over L2-normalised vectors keyed by catalog ids, for any FAISS index type."""

    def __init__(self, dimension: int, model_id: str, index: faiss.Index | None = None, factory: str = "Flat",
                 trained_count: int = 0, measured: IndexMeasurements | None = None) -> None:
        self.dimension = dimension
        self.model_id = model_id
        self.factory = factory
        self.trained_count = trained_count
        self.measured = measured or IndexMeasurements()
        self.index = index if index is not None else new_index(factory, dimension)
        if self.index.d != dimension:
            raise IndexMismatchError(f"index has dimension {self.index.d}, expected {dimension}")

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def is_trained(self) -> bool:
        return bool(self.index.is_trained)

    def train(self, vectors: np.ndarray) -> None:
        if not self.index.is_trained:
            self.index.train(np.ascontiguousarray(vectors, dtype=np.float32))
            self.trained_count = len(vectors)

    def ids(self) -> np.ndarray:
        return stored_ids(self.index)

    def search_config(self, config: IndexConfig | None) -> IndexConfig:
        """`config` with nprobe 0 (auto) replaced by the nprobe measured when this index was built."""
        config = config or IndexConfig()
        return config if config.nprobe else replace(config, nprobe=self.measured.nprobe or DEFAULT_NPROBE)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise IndexMismatchError(f"vectors have shape {vectors.shape}, index dimension is {self.dimension}")
        self.index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        try:
            return int(self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))
        except RuntimeError as exc:
            raise RemoveUnsupportedError(f"{self.factory} index cannot remove vectors: {exc}") from None

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allowed_ids: np.ndarray | None = None,
        config: IndexConfig | None = None,
    ) -> list[list[tuple[int, float]]]:
        """Per query, up to k (id, score) pairs, best first; `allowed_ids` filters inside the search."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dimension)
        if self.count == 0 or k < 1 or (allowed_ids is not None and len(allowed_ids) == 0):
            return [[] for _ in range(len(queries))]
        k = min(k, self.count)
        selector = None
        selectivity = 1.0
        if allowed_ids is not None:
            selector = faiss.IDSelectorBatch(np.ascontiguousarray(allowed_ids, dtype=np.int64))
            selectivity = min(1.0, len(allowed_ids) / self.count)
        params = search_parameters(self.index, self.search_config(config), k, selector, selectivity)
        with single_query_threads(len(queries)):
            scores, ids = self.index.search(queries, k, params=params)
        return [
            [(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
            for row_ids, row_scores in zip(ids, scores, strict=True)
        ]

    def range_search(self, queries: np.ndarray, min_score: float, config: IndexConfig | None = None,
                     fallback_k: int = 64) -> list[list[tuple[int, float]]]:
        """Per query, every (id, score) with score >= `min_score`, best first.

        Index types without range search (HNSW) answer from the `fallback_k` nearest instead.
        """
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dimension)
        if self.count == 0:
            return [[] for _ in range(len(queries))]
        params = search_parameters(self.index, self.search_config(config), fallback_k, None, 1.0)
        try:
            # FAISS keeps inner-product results strictly above the radius.
            lims, scores, ids = self.index.range_search(queries, float(np.nextafter(min_score, -np.inf)),
                                                        params=params)
        except RuntimeError:
            rows = self.search(queries, fallback_k, None, config)
            return [[(i, s) for i, s in row if s >= min_score] for row in rows]
        out = []
        for q in range(len(queries)):
            row = sorted(zip(ids[lims[q]:lims[q + 1]].tolist(), scores[lims[q]:lims[q + 1]].tolist(), strict=True),
                         key=lambda pair: -pair[1])
            out.append([(int(i), float(s)) for i, s in row if s >= min_score])
        return out


def _mmap_flags(factory: str) -> int:
    """FAISS maps an IVF index's inverted lists with IO_FLAG_MMAP; other types need IO_FLAG_MMAP_IFC."""
    mapped = faiss.IO_FLAG_MMAP if "IVF" in factory else faiss.IO_FLAG_MMAP_IFC
    return mapped | faiss.IO_FLAG_READ_ONLY


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes, written_point: str = "") -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        fault_point(written_point)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


class IndexStore:
    """A directory of index generations plus the manifest naming the current one."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def manifest(self) -> Manifest | None:
        path = self.directory / MANIFEST
        try:
            return Manifest(**json.loads(path.read_text("utf-8")))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.warning("index manifest %s is unreadable (%s); the index will be rebuilt", path, exc)
            return None

    def load(self, manifest: Manifest, mmap: bool = False) -> VectorIndex | None:
        """The generation the manifest names, or None when its file is missing or damaged.

        With `mmap`, the vectors stay in the file and are paged in on demand, shared by every
        process that maps the same generation (read-only: for servers, never for the indexer).
        """
        path = self.directory / manifest.file
        try:
            index = faiss.read_index(str(path), _mmap_flags(manifest.factory) if mmap else 0)
        except RuntimeError as exc:
            log.warning("index file %s cannot be read (%s); the index will be rebuilt", path, exc)
            return None
        if index.ntotal != manifest.count or index.d != manifest.dimension:
            log.warning("index file %s does not match its manifest; the index will be rebuilt", path)
            return None
        return VectorIndex(manifest.dimension, manifest.model_id, index, manifest.factory, manifest.trained_count,
                           manifest.measurements())

    def publish(self, index: VectorIndex, high_water: int) -> Manifest:
        """Write `index` as the next generation and make it current; older generations are removed.

        Raises IndexWriteError when the files cannot be written; the previous generation then
        stays current and loadable.
        """
        previous = self.manifest()
        generation = (previous.generation if previous else 0) + 1
        name = f"vectors-{generation:06d}.faiss"
        data = faiss.serialize_index(index.index).tobytes()
        manifest = Manifest(generation, name, index.count, index.dimension, index.model_id, high_water, time.time(),
                            index.factory, index.trained_count, **asdict(index.measured))
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.directory / name, data, "index-temp-written")
            fault_point("index-renamed")
            _write_atomic(self.directory / MANIFEST, json.dumps(asdict(manifest), indent=2).encode("utf-8"))
        except OSError as exc:
            state = (f"Generation {generation} is current, but may not survive a power cut"
                     if self._discard_unpublished(name) else "The previous generation stays current")
            raise IndexWriteError(
                f"cannot write index generation {generation} ({len(data):,} bytes) to {self.directory}: "
                f"{exc.strerror or exc}. {state} and the catalog keeps every change; once the "
                "cause is fixed, run the indexer (or `lookalike rebuild`) again."
            ) from exc
        fault_point("manifest-written")
        self.remove_stale(keep=name)
        log.info("published index generation %d (%d vectors)", generation, index.count)
        return manifest

    def _discard_unpublished(self, name: str) -> bool:
        """After a failed publish: True when the manifest already names `name`, else delete that file."""
        try:
            current = self.manifest()
            if current is not None and current.file == name:
                return True
            (self.directory / name).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot clean up unpublished index file %s: %s", self.directory / name, exc)
        return False

    def remove_stale(self, keep: str) -> None:
        """Delete generations other than `keep` and temp files left by a crashed writer."""
        stale = [p for p in self.directory.glob("vectors-*.faiss") if p.name != keep]
        for path in stale + list(self.directory.glob(".*.tmp")):
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # a leftover file costs space, not correctness
                log.warning("cannot delete stale index file %s: %s", path, exc)
