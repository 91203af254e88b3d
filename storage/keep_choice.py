"""Which copy of a group of duplicates to suggest keeping: one rule for `lookalike duplicates --json` and the
web page's Duplicates view, so both always agree.

The rule, in order:

1. the largest pixel count (width x height): the copy with the most detail;
2. then the least compressed: the most file bytes per pixel. Among copies of equal pixel count, a
   bigger file has thrown less away (a PNG over a JPEG, a quality-95 JPEG over a quality-70 one);
3. then the oldest: the smallest modification time (for an image held by several files, its oldest
   file's), most likely the original that the others were copied from;
4. then the smallest key (image id, or path for identical files), so the choice is stable.

It is only a suggestion: nothing in lookalike deletes library files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

KEEP = "keep"
REMOVE = "remove"


@dataclass(frozen=True)
class Copy:
    """One candidate: a file (of identical files) or an image (of near-duplicates)."""

    key: int | str  # the image id, or the path among identical files: the last tie-break
    width: int
    height: int
    size: int  # bytes of the file
    mtime_ns: int  # modification time; for an image held by several files, its oldest file's

    @property
    def pixels(self) -> int:
        return self.width * self.height


def keep_rank(copy: Copy) -> tuple[int, Fraction, int, int | str]:
    """Sort key: the copy to keep sorts first. Bytes per pixel compare exactly (no float ties)."""
    return -copy.pixels, -Fraction(copy.size, max(copy.pixels, 1)), copy.mtime_ns, copy.key


def suggest_keep(copies: Sequence[Copy]) -> int:
    """Position in `copies` of the one to keep (raises ValueError for no copies)."""
    if not copies:
        raise ValueError("a duplicate group needs at least one copy")
    return min(range(len(copies)), key=lambda i: keep_rank(copies[i]))


def suggestions(copies: Sequence[Copy]) -> list[str]:
    """Per copy, "keep" for the suggested one and "remove" for the others."""
    keep = suggest_keep(copies)
    return [KEEP if i == keep else REMOVE for i in range(len(copies))]
