"""The request body as the views read it: within the size limit, chunked or not, and every way it can
fail answered with the right 4xx instead of a 500.

Werkzeug cuts a chunked body (no Content-Length) silently at MAX_CONTENT_LENGTH and decodes what it
got; gunicorn raises its own parse errors (an invalid chunk size) through the stream. Here a body
that goes past the limit is 413 like one whose Content-Length says so, malformed framing is 400,
and a body the client did not finish sending within api.read_timeout is 408.
"""

from __future__ import annotations

import io
from typing import IO, Any

from flask import Flask, Request
from werkzeug.exceptions import BadRequest, ClientDisconnected, HTTPException, RequestEntityTooLarge, RequestTimeout
from werkzeug.utils import cached_property
from werkzeug.wsgi import get_input_stream

try:  # the errors gunicorn raises while it reads a body for the app
    from gunicorn.http.errors import ParseException
except ImportError:  # pragma: no cover - served by another WSGI server
    ParseException = ValueError  # type: ignore[assignment,misc]


READ_PIECE = 1 << 20


class CheckedBody(io.RawIOBase):
    """Reads `stream`, raising 413 past `limit` bytes (None: the stream enforces the length itself)."""

    def __init__(self, stream: IO[bytes], limit: int | None, environ: dict[str, Any]) -> None:
        super().__init__()
        self._stream = stream
        self._limit = limit
        self._environ = environ
        self._read = 0

    def readable(self) -> bool:
        return True

    def _timed_out(self) -> bool:
        """Whether the server closed the connection because the client took too long to send the body."""
        return getattr(self._environ.get("gunicorn.socket"), "timed_out", None) == "read"

    def _cut_short(self) -> HTTPException:
        if self._timed_out():
            timeout = getattr(self._environ.get("gunicorn.socket"), "read_timeout", 0)
            return RequestTimeout(f"the request body did not arrive within {timeout:g} s (api.read_timeout)")
        return ClientDisconnected()

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size >= 0:
            return super().read(size)
        # The whole body in large pieces: RawIOBase.readall would go 8 kB at a time, into a growing copy.
        pieces = []
        while piece := super().read(READ_PIECE):
            pieces.append(piece)
        return b"".join(pieces)

    readall = read

    def readinto(self, buffer: Any) -> int:
        want = len(buffer) if self._limit is None else min(len(buffer), self._limit + 1 - self._read)
        try:
            data = self._stream.read(max(want, 1))
        except ClientDisconnected:
            raise self._cut_short() from None
        except HTTPException:
            raise
        except ParseException as exc:
            raise BadRequest(f"malformed request body: {exc}") from None
        except (OSError, ValueError):
            raise self._cut_short() from None
        if not data and self._timed_out():
            raise self._cut_short()
        self._read += len(data)
        if self._limit is not None and self._read > self._limit:
            raise RequestEntityTooLarge()
        buffer[:len(data)] = data
        return len(data)


class LookalikeRequest(Request):
    @cached_property
    def stream(self) -> IO[bytes]:  # type: ignore[override]
        if self.content_length is None and "wsgi.input_terminated" in self.environ:
            # A chunked body: werkzeug would stop at the limit without a word; count it here instead.
            return CheckedBody(self.environ["wsgi.input"], self.max_content_length, self.environ)
        # A Content-Length over the limit raises 413 here; werkzeug keeps reads within the length.
        stream = get_input_stream(self.environ, max_content_length=self.max_content_length)
        return CheckedBody(stream, None, self.environ)


def init_app(app: Flask) -> None:
    """Views read their bodies through LookalikeRequest."""
    app.request_class = LookalikeRequest
