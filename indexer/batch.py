"""One commit's worth of a run's outcomes, gathered from prepared rows in the order the files came.

A row is a candidate file after reading (by a decode worker here, or a Ray task): rejected with a
reason, or its content hash and, when the catalog did not hold that content, decoded for the model.
The batch keeps what the catalog will record (files, rejections, new images) and the rows of new
content still waiting for the model; it is committed only once nothing waits (files may point at it).
"""

from __future__ import annotations

from collections.abc import Set
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from indexer.scan import FoundFile
from storage.catalog import FileRef, NewImage
from storage.rejections import Rejection

CORRUPT = "corrupt"  # the kind of a rejection whose reader named none


class PreparedRow(Protocol):
    """A candidate file after reading. `file` holds the size and time of the bytes actually read."""

    @property
    def file(self) -> FoundFile: ...

    @property
    def content_hash(self) -> str: ...

    @property
    def error_kind(self) -> str | None: ...

    @property
    def error(self) -> str | None: ...

    @property
    def is_decoded(self) -> bool:
        """Decoded for the model: its content is not in the catalog."""
        ...


R = TypeVar("R", bound=PreparedRow)


def needs_embedding(content_hash: str, decoded: bool, embedded: Set[str]) -> bool:
    """Whether a readable file brings content to embed: the catalog does not hold it (so it was decoded)
    and this run has not embedded it already (a copy met earlier in the run is embedded once)."""
    return decoded and content_hash not in embedded


def commit_size(commit_every: int, embed_batch: int) -> int:
    """Rows per commit: the configured count, but never less than one model batch."""
    return max(commit_every, embed_batch)


@dataclass
class Batch(Generic[R]):
    """What one catalog transaction will record, and the rows of new content still to embed."""

    files: list[FileRef] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    new_images: list[NewImage] = field(default_factory=list)
    waiting: list[R] = field(default_factory=list)  # rows of new content the model has not embedded yet

    @property
    def size(self) -> int:
        """Files the batch accounts for, stored or rejected: what `indexer.commit_every` counts."""
        return len(self.files) + len(self.rejected)

    def is_empty(self) -> bool:
        return not (self.files or self.rejected or self.new_images or self.waiting)

    def add_file(self, row: PreparedRow) -> None:
        """A readable file, pointed at its content (embedded now, earlier, or waiting in this batch)."""
        f = row.file
        self.files.append(FileRef(f.path, f.root, f.size, f.mtime_ns, row.content_hash))

    def reject(self, row: PreparedRow) -> Rejection:
        """A file that cannot be indexed, recorded with its reason; returns the record."""
        f = row.file
        rejection = Rejection(f.path, f.root, f.size, f.mtime_ns, row.error_kind or CORRUPT, row.error or "")
        self.rejected.append(rejection)
        return rejection

    def take_waiting(self) -> list[R]:
        """The rows waiting for the model, handed over once: their images come back through `new_images`."""
        waiting, self.waiting = self.waiting, []
        return waiting
