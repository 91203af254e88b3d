"""The request body as the views read it: within the size limit, chunked or not, and every way it can
fail answered with the right 4xx instead of a 500.

Werkzeug cuts a chunked body (no Content-Length) silently at MAX_CONTENT_LENGTH and decodes what it
got; gunicorn raises its own parse errors (an invalid chunk size) through the stream. Here a body
that goes past the limit is 413 like one whose Content-Length says so, malformed framing is 400,
and a body the client did not finish sending within api.read_timeout is 408.

A worker answers many requests at once (api.threads), and each holds its body in memory while it is
read and decoded: BodyBudget bounds their total (api.upload_memory_mb). A large body reserves its
size before its first byte is read, and waits (api.queue_timeout, then 503) when the budget is spent.
"""

from __future__ import annotations

import io
import threading
import time
from typing import IO, Any, cast

from flask import Flask, Request, current_app, request
from werkzeug.exceptions import BadRequest, ClientDisconnected, HTTPException, RequestEntityTooLarge, RequestTimeout
from werkzeug.utils import cached_property
from werkzeug.wsgi import get_input_stream

from search_api.busy import ServerBusy

BODY_PARSE_ERRORS: tuple[type[Exception], ...]  # the errors the server raises while it reads a body for the app
try:
    from gunicorn.http.errors import ParseException

    BODY_PARSE_ERRORS = (ParseException,)
except ImportError:  # pragma: no cover - served by another WSGI server
    BODY_PARSE_ERRORS = (ValueError,)

READ_PIECE = 1 << 20
SMALL_BODY = 256 * 1024  # bodies below this size need no reservation


class BodyBudget:
    """Bytes of request bodies one worker may hold at once, reserved per body before it is read."""

    def __init__(self, limit_bytes: int, wait_seconds: float) -> None:
        self.limit, self.wait_seconds = limit_bytes, wait_seconds
        self.used = 0
        self._changed = threading.Condition()

    def reserve(self, size: int) -> int:
        """Reserve `size` bytes (at most the whole budget), waiting up to wait_seconds; what was reserved."""
        size = min(size, self.limit)
        deadline = time.monotonic() + self.wait_seconds
        with self._changed:
            while self.used + size > self.limit:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServerBusy(f"request bodies already use this worker's {self.limit / 2**20:g} MB "
                                     "(api.upload_memory_mb); try again shortly")
                self._changed.wait(remaining)
            self.used += size
        return size

    def release(self, size: int) -> None:
        with self._changed:
            self.used -= size
            self._changed.notify_all()


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
        except BODY_PARSE_ERRORS as exc:
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
    reserved = 0  # bytes of the worker's BodyBudget this request holds

    @cached_property
    def stream(self) -> IO[bytes]:
        if self.content_length is None and "wsgi.input_terminated" in self.environ:
            # A chunked body: werkzeug would stop at the limit without a word; count it here instead.
            self._reserve(self.max_content_length)
            return cast(IO[bytes], CheckedBody(self.environ["wsgi.input"], self.max_content_length, self.environ))
        # A Content-Length over the limit raises 413 here; werkzeug keeps reads within the length.
        stream = get_input_stream(self.environ, max_content_length=self.max_content_length)
        self._reserve(self.content_length)
        return cast(IO[bytes], CheckedBody(stream, None, self.environ))  # a RawIOBase: a binary file

    def _reserve(self, size: int | None) -> None:
        budget: BodyBudget | None = current_app.extensions.get("lookalike.body_budget")
        if budget is not None and size is not None and size >= SMALL_BODY:
            self.reserved = budget.reserve(size)


def init_app(app: Flask, budget: BodyBudget | None = None) -> None:
    """Views read their bodies through LookalikeRequest, within `budget` when given."""
    app.request_class = LookalikeRequest
    if budget is None:
        return
    app.extensions["lookalike.body_budget"] = budget

    @app.teardown_request
    def _release_body(exc: BaseException | None) -> None:
        current = cast(LookalikeRequest, request)  # app.request_class, set above
        if current.reserved:
            budget.release(current.reserved)
            current.reserved = 0
