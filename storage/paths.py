"""File paths as the catalog stores them, and as people see them.

A path on a POSIX disk is a string of bytes, and names that are not valid UTF-8 (old FAT and
Samba copies) are normal. Python hands them over as `str` with each undecodable byte turned
into a lone surrogate U+DC80..U+DCFF ("surrogateescape"), which no database text column
accepts. Inside the program paths stay in that form; the catalog column type (storage.schema.PathText,
kept apart so that printing a path never imports SQLAlchemy) turns them
into text that every database stores, and back, so a path survives the round trip byte for byte:

- a backslash is stored as two backslashes,
- an undecodable byte (U+DC80..U+DCFF) is stored as `\\xNN` (its two hex digits),
- everything else is stored unchanged (ordinary paths are byte-identical in the database).

People see paths in two forms: `display_path` (undecodable bytes as U+FFFD, for JSON and web
pages) and `printable` (also control characters escaped, for terminals and logs).
"""

from __future__ import annotations

import re

_ESCAPED = re.compile(r"\\(\\|x[0-9a-fA-F]{2})")
_NEEDS_ESCAPE = re.compile(r"[\\\udc80-\udcff]")
# Shown escaped on a terminal: C0/C1 controls and DEL, line and paragraph separators, and the
# bidirectional overrides and isolates that can make a name read differently from what it is.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return "\\\\" if char == "\\" else f"\\x{ord(char) - 0xDC00:02x}"


def _unescape(match: re.Match[str]) -> str:
    code = match.group(1)
    return "\\" if code == "\\" else chr(0xDC00 + int(code[1:], 16))


def to_db(path: str) -> str:
    """The catalog text of `path` (a str that may hold surrogate-escaped bytes); injective."""
    return _NEEDS_ESCAPE.sub(_escape, path)


def from_db(text: str) -> str:
    """The path whose catalog text is `text` (the inverse of `to_db`)."""
    return _ESCAPED.sub(_unescape, text) if "\\" in text else text


def display_path(path: str) -> str:
    """`path` for people and JSON: every undecodable byte becomes U+FFFD, everything else is kept."""
    if not _has_surrogates(path):
        return path
    try:
        raw = path.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no file system produces: keep it visible all the same
        raw = path.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "replace")


def printable(text: str) -> str:
    """`text` safe to print on a terminal or in a log line: control characters, bidi overrides and
    undecodable bytes are shown as escapes (`\\n`, `\\x1b`, `\\xff`, `\\u202e`), so a file name can
    neither move the cursor, ring the bell, fake a new line nor hide its real bytes."""
    return _UNPRINTABLE.sub(_printable_escape, text)


def _printable_escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    if 0xDC80 <= code <= 0xDCFF:
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def _has_surrogates(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False
