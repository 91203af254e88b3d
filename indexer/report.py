"""What an indexing run tells its caller: progress as it goes, and the report at the end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from storage.paths import display_path


class Progress(Protocol):
    """Receives the number of files to process (of `found`), then one outcome per file: indexed, linked or failed."""

    def start(self, total: int, found: int = 0) -> None: ...

    def advance(self, outcome: str) -> None: ...


class NoProgress:
    """A progress receiver for runs nobody watches."""

    def start(self, total: int, found: int = 0) -> None:
        pass

    def advance(self, outcome: str) -> None:
        pass


@dataclass
class IndexReport:
    """What one run did; `to_json()` is the contract of `lookalike index --json`."""

    indexed: int = 0  # images embedded this run
    linked: int = 0  # files whose content was already embedded (moved, renamed, duplicate, touched)
    unchanged: int = 0
    skipped: int = 0  # rejected by an earlier run and unchanged since
    removed: int = 0
    failed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    kept: int = 0  # catalog files kept unchecked: under a folder that could not be listed, or not stat'ed
    unreadable: list[dict[str, str]] = field(default_factory=list)  # folders and files the scan could not check
    found: int = 0
    seconds: float = 0.0
    interrupted: bool = False  # stopped early on request; everything reported here is committed
    reindexed: int = 0  # of `indexed`: images embedded again for a reindex (--reindex)
    reindex_resumed: int = 0  # images a reindex interrupted earlier had embedded already
    not_reindexed: int = 0  # images a reindex could not read again (their files are in `failures`)

    def to_json(self) -> dict[str, object]:
        rate = self.indexed / self.seconds if self.seconds > 0 else 0.0
        return {
            "indexed": self.indexed,
            "linked": self.linked,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "removed": self.removed,
            "failed": self.failed,
            "failures": [{**f, "path": display_path(f["path"])} for f in self.failures],
            "kept": self.kept,
            "unreadable": [{**u, "path": display_path(u["path"])} for u in self.unreadable],
            "found": self.found,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(rate, 2),
            "interrupted": self.interrupted,
            "reindexed": self.reindexed,
            "reindex_resumed": self.reindex_resumed,
            "not_reindexed": self.not_reindexed,
        }
