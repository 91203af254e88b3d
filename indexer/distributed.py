"""The indexing run on a Ray cluster: the same plan and catalog writes, with reading and embedding spread out.

The driver runs the same runner as the single-machine indexer (indexer.runner): it scans the
library and compares it with the catalog (indexer.plan), so unchanged, moved, removed and
rejected files are handled the same way. Only the source of rows differs (`RaySource`): Ray
Data runs two stages over the candidate files:

- read + hash + decode (`FilePreparer`) in CPU tasks: content already in the catalog is only
  hashed, and thumbnails are written next to the catalog (`storage.data_dir`);
- embed in a pool of actors, each loading the model once (one per GPU when the cluster has
  GPUs, else one per node).

The driver takes the results a commit at a time and commits each in one transaction, then extends
and publishes the FAISS index as the single-machine indexer does. Commits are idempotent: content
that is already in the catalog (a retried batch whose rows landed, or another writer that got
there first) is linked rather than inserted again (`CatalogWriter(merge_known_content=True)`).

TensorFlow is imported only inside the embedding actors, never in the driver or decode tasks.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.batch import commit_size
from indexer.catalog_writer import CatalogWriter
from indexer.model import STORED_PREDICTIONS
from indexer.prepare import FilePreparer, PrepareConfig
from indexer.ray_cluster import ClusterInfo, check_catalog_for_cluster
from indexer.reindex import Reembedded, read_problem
from indexer.report import IndexReport, Progress
from indexer.runner import IndexRunner
from indexer.scan import FoundFile
from indexer.settings import ModelSettings, Settings
from indexer.tf_runtime import CPU_BATCH_SIZE, GPU_BATCH_SIZE
from storage.catalog import Catalog, NewImage
from storage.paths import from_db, to_db
from storage.staging import FileOfImage, ToReread
from storage.vector_index import IndexStore

log = logging.getLogger(__name__)

DECODE_ROWS_PER_TASK = 16  # files per decode task: enough to hide the task overhead, small for retries
MIN_EMBED_ROWS_PER_CALL = 32  # rows per actor call; the actor embeds them in model-sized batches
DECODE_TASK_BASE_MEMORY = 128 * 2**20  # a decode worker process with Pillow, NumPy and SQLAlchemy


class DistributedIndexError(RuntimeError):
    """The Ray cluster could not run the pipeline (a model that does not load on a worker, a lost node...)."""


class RayIndexer:
    """Brings the catalog and index in step with library roots, reading and embedding on a Ray cluster."""

    def __init__(self, settings: Settings, catalog: Catalog, store: IndexStore, model_id: str,
                 cluster: ClusterInfo, progress: Progress | None = None) -> None:
        self.database_url = settings.storage.resolved_database_url()
        self.cluster = cluster
        self.source = RaySource(settings, model_id, cluster)
        self.writer = CatalogWriter.from_settings(settings, catalog, store, model_id, merge_known_content=True)
        self.runner: IndexRunner[RayRow] = IndexRunner(catalog, self.source, self.writer,
                                                       commit_every=settings.indexer.commit_every, progress=progress)

    def request_stop(self) -> None:
        """Finish the current batch, commit it, publish the index and return (safe from a signal handler)."""
        self.runner.request_stop()

    def run(self, roots: Sequence[str], reindex: bool = False, allow_empty_roots: bool = False) -> IndexReport:
        check_catalog_for_cluster(self.database_url, self.cluster)
        return self.runner.run(roots, reindex, allow_empty_roots)


class RaySource:
    """A RowSource (see indexer.runner) on a Ray cluster: rows arrive read, decoded and embedded, without pixels."""

    def __init__(self, settings: Settings, model_id: str, cluster: ClusterInfo) -> None:
        self.model = settings.model
        self.model_id = model_id
        self.cluster = cluster
        self.prepare_config = PrepareConfig.from_settings(settings)
        self.max_image_pixels = settings.indexer.max_image_pixels
        self.embed_batch = settings.model.batch_size or (GPU_BATCH_SIZE if cluster.gpus >= 1 else CPU_BATCH_SIZE)
        self.fetch_rows = commit_size(settings.indexer.commit_every, self.embed_batch)  # rows a commit takes

    def open(self) -> None:
        """Nothing to start: Ray starts the tasks and actors when the driver asks for rows."""

    def close(self, stop_workers: bool) -> None:
        """Nothing to stop: the tasks and actors of a dataset end with it."""

    def embed_actors(self) -> int:
        """One actor per GPU, or one per node on a CPU-only cluster (TensorFlow uses the node's cores)."""
        return max(1, int(self.cluster.gpus)) if self.cluster.gpus >= 1 else max(1, self.cluster.nodes)

    def decode_task_memory(self) -> int:
        """Bytes a decode task may need: the largest accepted photo decoded to RGB, plus the process itself."""
        return DECODE_TASK_BASE_MEMORY + 3 * self.max_image_pixels

    def dataset(self, candidates: Sequence[FoundFile], decode_known: bool = False) -> Any:
        """The lazy Ray dataset: candidate files -> decoded (tasks) -> embedded (actor pool).

        `decode_known`: decode content the catalog holds too (a reindex embeds it with another model)."""
        import ray.data

        # Paths travel as their catalog text: Arrow holds only valid UTF-8, a file name may not be.
        rows = [{"path": to_db(f.path), "root": to_db(f.root), "size": f.size, "mtime_ns": f.mtime_ns}
                for f in candidates]
        use_gpus = self.cluster.gpus >= 1
        call_rows = max(self.embed_batch, MIN_EMBED_ROWS_PER_CALL)
        return (
            ray.data.from_items(rows)
            # fn_kwargs gives prepare_batch its other arguments (Ray's hints expect a one-argument function).
            .map_batches(prepare_batch, batch_size=DECODE_ROWS_PER_TASK, batch_format="numpy",  # type: ignore[arg-type]
                         fn_kwargs={"config": self.prepare_config, "decode_known": decode_known}, num_cpus=1,
                         # Room for the largest photo accepted. A request the actors do not make,
                         # it also keeps decoding a stage of its own instead of fused into the
                         # embedding actors, so decoding scales with CPUs, not with actors.
                         memory=self.decode_task_memory())
            .map_batches(EmbedBatch, batch_size=call_rows, batch_format="numpy",
                         fn_constructor_kwargs={"model": self.model, "model_id": self.model_id,
                                                "model_batch": self.embed_batch},
                         compute=ray.data.ActorPoolStrategy(size=self.embed_actors()),
                         num_gpus=1 if use_gpus else 0, num_cpus=1)
        )

    def rows(self, candidates: Sequence[FoundFile], stop: threading.Event) -> Iterator[RayRow]:
        """The dataset's rows, fetched a commit at a time (`stop` is the runner's to act on, between rows)."""
        return self._fetched(candidates, decode_known=False)

    def embed(self, rows: Sequence[RayRow]) -> list[NewImage]:
        """The rows' images: the actors embedded them already."""
        return [row.new_image(self.model_id) for row in rows]

    def reembed(self, items: Iterable[tuple[ToReread, FileOfImage]]) -> Iterator[Reembedded]:
        """A reindex's re-reading and embedding, on the cluster (see indexer.reindex)."""
        by_path = {file.path: (image, file) for image, file in items}
        if not by_path:
            return
        files = [FoundFile(f.path, f.root, f.size, f.mtime_ns) for _, f in by_path.values()]
        for row in self._fetched(files, decode_known=True):
            image, file = by_path[row.file.path]
            problem = read_problem(image, row)
            if problem is not None:
                yield Reembedded(image, file, error=problem)
            else:
                yield Reembedded(image, file, row.embedding, row.predictions)

    def _fetched(self, files: Sequence[FoundFile], decode_known: bool) -> Iterator[RayRow]:
        import ray.exceptions

        try:
            for fetched in self.dataset(files, decode_known).iter_batches(batch_size=self.fetch_rows,
                                                                          batch_format="numpy"):
                yield from rows_of(fetched)
        except ray.exceptions.RayError as exc:
            raise DistributedIndexError(f"the Ray cluster could not finish the run: {_root_cause(exc)}") from exc


@dataclass(frozen=True)
class RayRow:
    """One row of the Ray pipeline as the driver receives it: read, and embedded when new (pixels stay behind)."""

    file: FoundFile
    content_hash: str
    error_kind: str | None
    error: str | None
    is_decoded: bool
    width: int = 0
    height: int = 0
    format: str = ""
    embedding: np.ndarray | None = None
    predictions: tuple[tuple[int, float], ...] = ()

    def new_image(self, model_id: str) -> NewImage:
        assert self.embedding is not None, "a row of new content arrives embedded"
        return NewImage(self.content_hash, self.width, self.height, self.format, model_id, self.embedding,
                        list(self.predictions))


def rows_of(fetched: dict[str, np.ndarray]) -> Iterator[RayRow]:
    """The rows of one fetched batch (columns of the decode and embed stages), in order."""
    for i in range(len(fetched["path"])):
        kind = str(fetched["error_kind"][i])
        file = FoundFile(from_db(str(fetched["path"][i])), from_db(str(fetched["root"][i])),
                         int(fetched["size"][i]), int(fetched["mtime_ns"][i]))
        decoded = not kind and bool(fetched["decoded"][i])
        yield RayRow(file, str(fetched["content_hash"][i]), kind or None, str(fetched["error"][i]) if kind else None,
                     decoded, int(fetched["width"][i]), int(fetched["height"][i]), str(fetched["format"][i]),
                     np.asarray(fetched["embedding"][i], dtype=np.float32) if decoded else None,
                     tuple(_predictions(fetched, i)) if decoded else ())


def _predictions(fetched: dict[str, np.ndarray], i: int) -> list[tuple[int, float]]:
    """Row i's stored predictions; unused ranks (a model with fewer classes) hold class -1."""
    return [(int(c), float(p)) for c, p in zip(fetched["class_ids"][i], fetched["probabilities"][i], strict=True)
            if c >= 0]


def _root_cause(exc: BaseException) -> str:
    """The innermost error's last line: Ray wraps a worker's exception in layers of traceback text."""
    chain = [exc]
    while (inner := getattr(chain[-1], "cause", None) or chain[-1].__cause__) is not None and inner not in chain:
        chain.append(inner)
    for error in reversed(chain):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if lines:
            return re.sub(r"^[\w.]+\.(\w+):", r"\1:", lines[-1])  # indexer.model.XError: ... -> XError: ...
    return type(exc).__name__


# --- what runs on the workers -------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _preparer(config: PrepareConfig) -> FilePreparer:
    """One FilePreparer (and catalog connection pool) per worker process, reused by every task it runs."""
    return FilePreparer(config)


def prepare_batch(batch: dict[str, np.ndarray], config: PrepareConfig, decode_known: bool = False
                  ) -> dict[str, np.ndarray]:
    """Decode task: read, hash and decode each file; rows keep their order and carry any rejection."""
    preparer = _preparer(config)
    size = config.image_size
    count = len(batch["path"])
    pixels = np.zeros((count, size, size, 3), np.uint8)  # zeros where nothing is decoded
    out: dict[str, list[Any]] = {key: [] for key in ("content_hash", "width", "height", "format", "error_kind",
                                                     "error", "decoded", "size", "mtime_ns")}
    for i in range(count):
        found = FoundFile(from_db(str(batch["path"][i])), from_db(str(batch["root"][i])), int(batch["size"][i]),
                          int(batch["mtime_ns"][i]))
        item = preparer(found, decode_known)
        decoded = item.decoded
        if decoded is not None:
            pixels[i] = decoded.pixels
        out["content_hash"].append(item.content_hash)
        out["width"].append(decoded.width if decoded else 0)
        out["height"].append(decoded.height if decoded else 0)
        out["format"].append(decoded.format if decoded else "")
        out["error_kind"].append(item.error_kind or ("corrupt" if item.error else ""))
        out["error"].append(item.error or "")
        out["decoded"].append(decoded is not None)
        out["size"].append(item.file.size)  # of the bytes read, which may differ from the scan's
        out["mtime_ns"].append(item.file.mtime_ns)
    result = {key: batch[key] for key in ("path", "root")}
    result.update({key: np.asarray(values, dtype=object) for key, values in out.items()
                   if key not in ("width", "height", "decoded", "size", "mtime_ns")})
    result["size"] = np.asarray(out["size"], np.int64)
    result["mtime_ns"] = np.asarray(out["mtime_ns"], np.int64)
    result["width"] = np.asarray(out["width"], np.int64)
    result["height"] = np.asarray(out["height"], np.int64)
    result["decoded"] = np.asarray(out["decoded"], bool)
    result["pixels"] = pixels
    return result


class EmbedBatch:
    """Embedding actor: loads the model once, then embeds the decoded rows of each batch it is given."""

    def __init__(self, model: ModelSettings, model_id: str, model_batch: int) -> None:
        from indexer.model import Embedder

        self.embedder = Embedder.from_settings(model)
        if self.embedder.model_id != model_id:
            raise RuntimeError(f"worker loaded model {self.embedder.model_id}, the driver expects {model_id}")
        self.model_batch = max(1, model_batch)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from indexer.model import top_k

        decoded = np.asarray(batch["decoded"], bool)
        count = len(decoded)
        embedding = np.zeros((count, self.embedder.feature_dim), np.float32)
        class_ids = np.full((count, STORED_PREDICTIONS), -1, np.int32)
        probabilities = np.zeros((count, STORED_PREDICTIONS), np.float32)
        rows = np.flatnonzero(decoded)
        for start in range(0, len(rows), self.model_batch):
            chunk = rows[start:start + self.model_batch]
            out = self.embedder.embed(np.asarray(batch["pixels"][chunk], np.uint8))
            embedding[chunk] = out.features
            for row, predictions in zip(chunk, top_k(out.probabilities, STORED_PREDICTIONS), strict=True):
                for rank, (class_id, probability) in enumerate(predictions):
                    class_ids[row, rank], probabilities[row, rank] = class_id, probability
        result = {key: value for key, value in batch.items() if key != "pixels"}  # pixels stop here
        result.update(embedding=embedding, class_ids=class_ids, probabilities=probabilities)
        return result
