"""The one error for a worker that has no capacity left for a request within api.queue_timeout."""

from __future__ import annotations


class ServerBusy(RuntimeError):
    """Every decoder or model slot of this worker stayed busy for longer than a request may wait."""
