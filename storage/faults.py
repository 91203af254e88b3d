"""Named crash points, so recovery tests can kill a real run at the exact step they want to prove.

A point does nothing unless the environment variable LOOKALIKE_FAULT_POINT names it; then the
process is killed with SIGKILL (no cleanup, no flush, like a power cut for this process) on the
Nth time it is reached, N = LOOKALIKE_FAULT_AFTER (default 1). With LOOKALIKE_FAULT_ACTION=stall
the process instead stops there for good without exiting, like a read from a share that hangs.

Points: catalog-committed, index-temp-written, index-renamed, manifest-written (crash points of
the indexer); during a reindex also reindex-staged (after each batch of new vectors is stored)
and reindex-swapped (after the catalog switched models, before the new index generation is
named); file-read (a decode worker about to read a library file).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter

POINT_ENV = "LOOKALIKE_FAULT_POINT"
AFTER_ENV = "LOOKALIKE_FAULT_AFTER"
ACTION_ENV = "LOOKALIKE_FAULT_ACTION"
ENV_VARS = frozenset({POINT_ENV, AFTER_ENV, ACTION_ENV})
POINTS = ("catalog-committed", "index-temp-written", "index-renamed", "manifest-written")
REINDEX_POINTS = ("reindex-staged", "reindex-swapped")

_hits: Counter[str] = Counter()


def fault_point(name: str) -> None:
    """Kill this process here when LOOKALIKE_FAULT_POINT names this point and its hit count is reached."""
    if not name or os.environ.get(POINT_ENV) != name:
        return
    _hits[name] += 1
    if _hits[name] >= int(os.environ.get(AFTER_ENV) or 1):
        if os.environ.get(ACTION_ENV) == "stall":
            sys.stderr.write(f"fault point {name}: process {os.getpid()} stalls here\n")
            sys.stderr.flush()
            while True:
                time.sleep(3600)
        sys.stderr.write(f"fault point {name}: killing process {os.getpid()} (hit {_hits[name]})\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
