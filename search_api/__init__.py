"""The lookalike HTTP API.

`create_app` is imported on first use: importing a submodule (e.g. search_api.serve) must not
create the Prometheus metrics before `lookalike serve` has chosen their multiprocess directory.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from search_api.app import create_app

        return create_app
    raise AttributeError(f"module 'search_api' has no attribute {name!r}")
