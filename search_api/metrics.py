"""Prometheus metrics: request latency per route template, model and index timings, index size.

Under `lookalike serve` PROMETHEUS_MULTIPROC_DIR is set before any worker starts, so every
worker writes its samples there and `/metrics` (answered by any one worker) adds them up with
prometheus_client's MultiProcessCollector. Without it (tests, the development server) the
process's own registry is served.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from flask import Blueprint, Flask, Response, g, request
from flask.typing import ResponseReturnValue
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from search_api.current import current_service
from search_api.metrics_env import MULTIPROC_ENV
from search_api.openapi import operation

# Route label of requests that matched no route (404s for unknown paths), so the label set stays bounded.
UNMATCHED_ROUTE = "<unmatched>"

REQUEST_SECONDS = Histogram(
    "lookalike_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template (not raw path), method and status.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
EMBED_SECONDS = Histogram(
    "lookalike_embed_seconds",
    "Time to decode and embed the query images of one request (one model call).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
QUERY_EMBEDDINGS = Counter(
    "lookalike_query_embeddings_total",
    "Query images embedded, by source: model (decoded and run through the model) or catalog (bytes already "
    "indexed: their stored vector and predictions).",
    ["source"],
)
SEARCH_SECONDS = Histogram(
    "lookalike_search_seconds",
    "Time to search the vector index and join the catalog for one query vector.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
INDEX_VECTORS = Gauge("lookalike_index_vectors", "Vectors in the index generation being served.",
                      multiprocess_mode="livemostrecent")
INDEX_GENERATION = Gauge("lookalike_index_generation", "Index generation being served (-1: none published).",
                         multiprocess_mode="livemostrecent")

bp = Blueprint("metrics", __name__)


def record_index(vectors: int, generation: int | None) -> None:
    INDEX_VECTORS.set(vectors)
    INDEX_GENERATION.set(-1 if generation is None else generation)


def _registry() -> CollectorRegistry:
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


@bp.get("/metrics")
@operation(summary="Prometheus metrics (text exposition format)", response={CONTENT_TYPE_LATEST: "text"},
           tags=("meta",))
def metrics() -> ResponseReturnValue:
    """Prometheus text exposition of this server's metrics (all workers under gunicorn)."""
    service = current_service()
    index = service.index()
    record_index(index.count if index is not None else 0, service.generation())
    # CONTENT_TYPE_LATEST names its charset already: as a mimetype, Flask would add a second one.
    return Response(generate_latest(_registry()) + _watcher_metrics(service.data_dir),
                    content_type=CONTENT_TYPE_LATEST)


def _watcher_metrics(data_dir: Path) -> bytes:
    """The gauges of the watcher keeping `data_dir` in step (another process: read from its status file)."""
    from indexer.watch_status import read_status

    status = read_status(data_dir) or {}
    values = {
        ("lookalike_watch_running", "1 while a watcher (lookalike watch, serve --watch) keeps the library in step."):
            1 if status else 0,
        ("lookalike_watch_roots", "Library roots the watcher watches."): len(status.get("roots", [])),
        ("lookalike_watch_roots_missing", "Watched roots that are missing or unmounted now (nothing removed)."):
            len(status.get("vanished", [])),
        ("lookalike_watch_events_received", "File-system events the watcher received since it started."):
            status.get("events", 0),
        ("lookalike_watch_files_settling", "Files written lately, waiting to be complete before they are indexed."):
            status.get("waiting", 0),
        ("lookalike_watch_index_lag_seconds", "Age of the oldest change the watcher has not committed yet (0: none)."):
            status.get("lag_seconds", 0.0),
    }
    registry = CollectorRegistry()
    # Metric families made here and now: a Gauge would keep a value file in the multiprocess directory.
    registry.register(_Families([GaugeMetricFamily(name, description, value=float(value))
                                 for (name, description), value in values.items()]))
    return generate_latest(registry)


class _Families(Collector):
    def __init__(self, families: list[GaugeMetricFamily]) -> None:
        self.families = families

    def collect(self) -> Iterator[GaugeMetricFamily]:
        return iter(self.families)


def init_app(app: Flask) -> None:
    """Time every request; the route label is the URL rule (`/api/v1/images/<int:image_id>`)."""

    @app.before_request
    def _start_timer() -> None:
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        started = g.pop("metrics_started", None)
        if started is not None:
            route = request.url_rule.rule if request.url_rule is not None else UNMATCHED_ROUTE
            REQUEST_SECONDS.labels(route, request.method, str(response.status_code)).observe(
                time.perf_counter() - started)
        return response

    app.register_blueprint(bp)
