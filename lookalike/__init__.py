"""lookalike: self-hosted image similarity search (the `lookalike` command lives in lookalike.cli)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lookalike")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"
