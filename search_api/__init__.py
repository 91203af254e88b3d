"""The lookalike HTTP API."""

from search_api.app import create_app

__all__ = ["create_app"]
