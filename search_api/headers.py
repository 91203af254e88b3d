"""Response header values built from file names, which may hold any byte but "/" and NUL."""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from storage.paths import display_path

# RFC 8187 attr-char: what a filename* value may hold unencoded.
_ATTR_CHARS = "!#$&+-.^_`|~"
# Left out of the quoted ASCII fallback: controls (a newline would end the header), quotes and
# backslashes (they would end or escape the quoted string).
_NOT_IN_FALLBACK = re.compile(r'[\x00-\x1f\x7f"\\]')
FALLBACK_NAME = "file"


def content_disposition(name: str, disposition: str = "inline") -> str:
    """A Content-Disposition value for a file called `name` (RFC 6266): an ASCII `filename` every
    client reads, plus the exact name as UTF-8 in `filename*` (undecodable bytes as U+FFFD)."""
    shown = display_path(name)
    ascii_name = unicodedata.normalize("NFKD", shown).encode("ascii", "ignore").decode("ascii")
    fallback = _NOT_IN_FALLBACK.sub("", ascii_name).strip() or FALLBACK_NAME
    value = f'{disposition}; filename="{fallback}"'
    if fallback != shown:
        value += f"; filename*=UTF-8''{quote(shown, safe=_ATTR_CHARS)}"
    return value
