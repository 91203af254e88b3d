"""The FAISS index: unit vectors keyed by catalog image ids, inner product = cosine similarity.

It is a derived cache of the catalog's embeddings. Files are published as numbered
generations (temp file, fsync, rename) followed by a manifest written the same way, so a
crash at any point leaves the previous generation readable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import faiss
import numpy as np

from storage.faults import fault_point
from storage.index_cost import IndexMeasurements, single_query_threads
from storage.index_factory import DEFAULT_NPROBE, IndexConfig, is_exact, new_index, search_parameters, stored_ids

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
# Scores are cosine similarities of unit vectors: FAISS's rounding stays far inside this limit, so
# anything beyond it (or NaN) comes from damaged vectors and is never served.
SCORE_LIMIT = 1.001
# Quantised codes (SQ, PQ) only approximate scores: up to this far beyond 1 is their rounding (clipped).
QUANTISED_SLACK = 0.05
# Stored vectors are L2-normalised float32: a norm further than this from 1 is damage.
NORM_TOLERANCE = 1e-3


def usable(vectors: np.ndarray) -> np.ndarray:
    """Per row, whether the vector is finite and of unit length; anything else is damage, kept out of indexes."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.abs(np.linalg.norm(vectors, axis=1) - 1) <= NORM_TOLERANCE  # NaN and inf compare false


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
    sha256: str = ""  # of the index file as written ("" in manifests written before it was recorded)
    left_out: int = 0  # catalog images whose damaged vectors (NaN, not unit length) were kept out of the index
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


class IndexDamagedError(RuntimeError):
    """The index answered a score no two unit vectors can have (or NaN): its vectors are damaged."""


class VectorIndex:
    """Inner-product search over L2-normalised vectors keyed by catalog ids, for any FAISS index type."""

    def __init__(self, dimension: int, model_id: str, index: faiss.Index | None = None, factory: str = "Flat",
                 trained_count: int = 0, left_out: int = 0, measured: IndexMeasurements | None = None) -> None:
        self.dimension = dimension
        self.model_id = model_id
        self.factory = factory
        self.trained_count = trained_count
        self.left_out = left_out  # catalog images with damaged vectors, kept out
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
            # faiss's wrapper takes an array of ids (its stubs know only an IDSelector for most index types).
            return int(self.index.remove_ids(np.ascontiguousarray(ids, dtype=np.int64)))  # type: ignore[arg-type]
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
        self._check_scores(scores, ids >= 0)
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
        self._check_scores(scores, ids >= 0)
        out = []
        for q in range(len(queries)):
            row = sorted(zip(ids[lims[q]:lims[q + 1]].tolist(), scores[lims[q]:lims[q + 1]].tolist(), strict=True),
                         key=lambda pair: -pair[1])
            out.append([(int(i), float(s)) for i, s in row if s >= min_score])
        return out


    def _check_scores(self, scores: np.ndarray, valid: np.ndarray) -> None:
        """Raise IndexDamagedError for a score outside [-1, 1] (beyond rounding) or NaN; clip rounding in place."""
        answered = scores[valid]
        limit = SCORE_LIMIT if is_exact(self.factory) else 1 + QUANTISED_SLACK
        with np.errstate(invalid="ignore"):
            bad = answered[~(np.abs(answered) <= limit)]  # NaN compares false: it is caught too
        if len(bad):
            raise IndexDamagedError(f"the {self.factory} index answered a score of {float(bad[0]):.6g}, outside "
                                    "[-1, 1]: its vectors are damaged")
        np.clip(scores, -1.0, 1.0, out=scores)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


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

    def digest_matches(self, manifest: Manifest) -> bool | None:
        """Whether the generation's file still has the checksum it was written with (None: not recorded)."""
        if not manifest.sha256:
            return None
        try:
            return file_sha256(self.directory / manifest.file) == manifest.sha256
        except OSError:
            return False

    def load(self, manifest: Manifest, mmap: bool = False, check_digest: bool = True) -> VectorIndex | None:
        """The generation the manifest names, or None when its file is missing or damaged.

        With `mmap`, the vectors stay in the file and are paged in on demand, shared by every
        process that maps the same generation (read-only: for servers, never for the indexer).
        Without it the file is read whole anyway, and its checksum is checked first: bytes
        changed since it was written make it damaged (a mapped index is guarded at search time).
        """
        path = self.directory / manifest.file
        if check_digest and not mmap and self.digest_matches(manifest) is False:
            log.warning("index file %s does not have the checksum it was written with: it is damaged, and "
                        "the index will be rebuilt from the catalog", path)
            return None
        try:
            index = faiss.read_index(str(path), _mmap_flags(manifest.factory) if mmap else 0)
        except RuntimeError as exc:
            log.warning("index file %s cannot be read (%s); the index will be rebuilt", path, exc)
            return None
        if index.ntotal != manifest.count or index.d != manifest.dimension:
            log.warning("index file %s does not match its manifest; the index will be rebuilt", path)
            return None
        return VectorIndex(manifest.dimension, manifest.model_id, index, manifest.factory, manifest.trained_count,
                           manifest.left_out, manifest.measurements())

    def publish(self, index: VectorIndex, high_water: int,
                before_manifest: Callable[[], object] | None = None) -> Manifest:
        """Write `index` as the next generation and make it current; older generations are removed.

        `before_manifest` runs once the new file is durably in place and before the manifest names
        it (a reindex switches the catalog there, so readers see the switch as late and as briefly
        as possible); if it raises, the new file is discarded and the previous generation stays.
        Raises IndexWriteError when the files cannot be written; the previous generation then
        stays current and loadable.
        """
        previous = self.manifest()
        generation = (previous.generation if previous else 0) + 1
        name = f"vectors-{generation:06d}.faiss"
        data = faiss.serialize_index(index.index).tobytes()
        manifest = Manifest(generation, name, index.count, index.dimension, index.model_id, high_water, time.time(),
                            index.factory, index.trained_count, hashlib.sha256(data).hexdigest(), index.left_out,
                            **asdict(index.measured))
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            _write_atomic(self.directory / name, data, "index-temp-written")
            fault_point("index-renamed")
            if before_manifest is not None:
                try:
                    before_manifest()
                except BaseException:
                    self._discard_unpublished(name)
                    raise
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
