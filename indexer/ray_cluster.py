"""Attach to (or start) the Ray cluster that indexes a library, and check that the catalog suits it.

`lookalike index --ray` with no address starts a local Ray, or attaches to one started on this
machine with `ray start`; `auto` attaches to the cluster this machine belongs to; `ray://HOST:PORT`
goes through the Ray Client; `HOST:PORT` attaches to the cluster whose head is there. Every
worker reads the library files and writes thumbnails itself, so several machines need shared
storage and a catalog database they can all reach: a SQLite file cannot be shared, PostgreSQL can.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

LOCAL = "local"  # start a Ray on this machine, or attach to the one running here
_HOST_PORT = re.compile(r"[A-Za-z0-9_.\-]+:\d{1,5}|\[[0-9A-Fa-f:]+\]:\d{1,5}")


class ClusterError(RuntimeError):
    """The Ray address is not usable, or the cluster cannot work with the configured catalog."""


@dataclass(frozen=True)
class ClusterInfo:
    """What the driver needs to know about the cluster to size the pipeline."""

    address: str
    nodes: int
    cpus: float
    gpus: float


def check_address(value: str) -> str:
    """`value` if it is a Ray address `--ray` accepts, else a ClusterError that says what is accepted."""
    if value in (LOCAL, "auto") or value.startswith("ray://") or _HOST_PORT.fullmatch(value):
        return value
    raise ClusterError(
        f"--ray: {value!r} is not a Ray address. Use `--ray` alone (a local Ray), `--ray auto`, "
        "`--ray ray://HOST:PORT` or `--ray HOST:PORT`; with no address, put --ray after the folders "
        "(`lookalike index PATH... --ray`) so that a folder is not taken for the address."
    )


def check_catalog_for_cluster(database_url: str, cluster: ClusterInfo) -> None:
    """Refuse a SQLite catalog on a cluster of several machines: they cannot share the file."""
    if make_url(database_url).get_backend_name() == "sqlite" and cluster.nodes > 1:
        raise ClusterError(
            f"storage.database_url is a SQLite file ({database_url}), but the Ray cluster at {cluster.address} "
            f"has {cluster.nodes} nodes: workers on several machines cannot share a SQLite file. Point "
            "storage.database_url at PostgreSQL (postgresql+psycopg://USER@HOST/DATABASE, with the `postgres` "
            "extra installed), or index with a single-node Ray."
        )


def cluster_info(address: str) -> ClusterInfo:
    """Nodes alive and the CPUs and GPUs they offer, from the connected Ray."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    resources = ray.cluster_resources()
    return ClusterInfo(address, len(nodes), float(resources.get("CPU", 0)), float(resources.get("GPU", 0)))


@contextmanager
def ray_cluster(address: str) -> Iterator[ClusterInfo]:
    """Connected to the Ray at `address` for the duration; a Ray this process started is shut down after.

    When this process is already connected (a notebook, a test), that connection is used as it is.
    """
    import ray

    check_address(address)
    owned = not ray.is_initialized()
    if owned:
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # worker warnings (unreadable files...) shown as they come
        kwargs: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
        if address == LOCAL:
            kwargs["include_dashboard"] = False
        try:
            ray.init(address=None if address == LOCAL else address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ClusterError(f"--ray {address}: cannot connect to the Ray cluster ({exc})") from None
    _quiet_ray_data()
    try:
        info = cluster_info(address)
        log.info("Ray cluster %s: %d node(s), %g CPUs, %g GPUs", address, info.nodes, info.cpus, info.gpus)
        yield info
    finally:
        if owned:
            ray.shutdown()


def _quiet_ray_data() -> None:
    """The indexer shows its own progress bar; Ray Data's bars and banners would interleave with it."""
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
