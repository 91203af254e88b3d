"""The gunicorn worker of `lookalike serve`: gthread, with a time budget per request and errors as problems.

gthread gives each request a thread from a fixed pool. A client that sends its request slowly, or
reads its response slowly, keeps that thread for as long as it likes, and a few such clients starve
everyone (/healthz included). Here each connection's socket carries two budgets per request:

- reading: the headers and the body of one request, within `api.read_timeout` seconds from its
  first byte (a body cut short this way is answered 408 by the app);
- sending: the whole response, within `api.send_timeout` seconds from its first byte.

Every read and write waits at most for what is left of its budget, so the total is bounded however
slowly the client trickles. Connections that have sent nothing yet wait in gthread's poller, not in
a thread, and are closed after `keepalive` seconds. Errors gunicorn answers itself (a request line
over its limit, bad framing) are RFC 9457 problems like the app's.

This module imports no part of the app: gunicorn loads the worker class in the arbiter process.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import selectors
import socket
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http.wsgi import Response, default_environ
from gunicorn.workers import gthread

from search_api.http_status import status_code, status_title

if TYPE_CHECKING:  # only for the checker: the arbiter must not import the app
    from search_api.serve import LookalikeServer

log = logging.getLogger(__name__)

# A new connection with nothing to read yet goes back to the poller at once: waiting for its first
# byte in a thread (gthread waits up to 5 s) would let idle connections hold every thread.
FIRST_BYTE_WAIT = 0.05
# After a response that closes the connection, unread request bytes are drained for at most this
# long before closing (closing with unread data makes the kernel send a reset, which can cut the
# response short). gthread lingers 2 s in its poller thread, where a client that never closes its
# end stalls every other connection.
CLOSE_LINGER = 0.5


class DeadlineSocket(socket.socket):
    """A client connection whose reads and writes for one request share two time budgets."""

    read_timeout: float  # api.read_timeout and api.send_timeout, set by adopt()
    send_timeout: float

    @classmethod
    def adopt(cls, sock: socket.socket, read_timeout: float, send_timeout: float) -> DeadlineSocket:
        blocking = sock.getblocking()
        adopted = cls(sock.family, sock.type, sock.proto, fileno=sock.detach())
        adopted.setblocking(blocking)
        adopted.read_timeout, adopted.send_timeout = read_timeout, send_timeout
        adopted.begin_request()
        return adopted

    def begin_request(self) -> None:
        """Budgets start with the first byte read, and the first byte sent, of the next request."""
        self._read_deadline: float | None = None
        self._send_deadline: float | None = None
        self.timed_out: str | None = None  # "read" or "send" once a budget ran out

    def _remaining(self, kind: str) -> float:
        now = time.monotonic()
        if kind == "read":
            if self._read_deadline is None:
                self._read_deadline = now + self.read_timeout
            return self._read_deadline - now
        if self._send_deadline is None:
            self._send_deadline = now + self.send_timeout
        return self._send_deadline - now

    def _expire(self, kind: str) -> None:
        if self.timed_out is None:
            self.timed_out = kind
            budget = self.read_timeout if kind == "read" else self.send_timeout
            what = "send its request" if kind == "read" else "read its response"
            setting = "api.read_timeout" if kind == "read" else "api.send_timeout"
            log.info("closing a connection whose client took more than %g s to %s (%s)", budget, what, setting)
        try:
            # Out of reading time, the connection can still carry the app's answer (408); out of
            # sending time, it can carry nothing more.
            super().shutdown(socket.SHUT_RD if kind == "read" else socket.SHUT_RDWR)
        except OSError:
            pass

    def _arm(self, kind: str) -> bool:
        """Bound the next blocking call by what is left of the budget; False when nothing is left."""
        remaining = self._remaining(kind)
        if remaining <= 0 or self.timed_out == kind:
            self._expire(kind)
            return False
        if self.gettimeout() != 0.0:  # leave gthread's non-blocking polls alone
            super().settimeout(remaining)
        return True

    # Reads: when the budget runs out the reading side is shut down and reads see its end (b"").
    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        if not self._arm("read"):
            return b""
        try:
            return super().recv(bufsize, flags)
        except TimeoutError:
            self._expire("read")
            return b""

    def recv_into(self, buffer: Any, nbytes: int = 0, flags: int = 0) -> int:
        if not self._arm("read"):
            return 0
        try:
            return super().recv_into(buffer, nbytes, flags)
        except TimeoutError:
            self._expire("read")
            return 0

    # Writes: when the budget runs out the connection is shut down and the write fails as any write
    # to a closed connection does (EPIPE), which gunicorn treats as a client that went away.
    def _send_failed(self) -> BrokenPipeError:
        self._expire("send")
        return BrokenPipeError(errno.EPIPE, f"response not read within {self.send_timeout:g} s (api.send_timeout)")

    def send(self, data: Any, flags: int = 0) -> int:
        if not self._arm("send"):
            raise self._send_failed()
        try:
            return super().send(data, flags)
        except TimeoutError:
            raise self._send_failed() from None

    def sendall(self, data: Any, flags: int = 0) -> None:
        # With a timeout set, socket.sendall bounds the whole call, not each wait.
        if not self._arm("send"):
            raise self._send_failed()
        try:
            super().sendall(data, flags)
        except TimeoutError:
            raise self._send_failed() from None

    def sendfile(self, file: Any, offset: int = 0, count: int | None = None) -> int:
        # socket.sendfile bounds each wait, not the whole transfer: a client reading a little now
        # and then would keep it going. Each slice here waits at most for what is left.
        fd = file.fileno()
        total = count if count is not None else os.fstat(fd).st_size - offset
        sent = 0
        with selectors.DefaultSelector() as selector:
            selector.register(self, selectors.EVENT_WRITE)
            while sent < total:
                remaining = self._remaining("send")
                if remaining <= 0 or not selector.select(remaining):
                    raise self._send_failed()
                try:
                    n = os.sendfile(self.fileno(), fd, offset + sent, min(total - sent, 1 << 20))
                except BlockingIOError:
                    continue
                if n == 0:
                    break
                sent += n
        file.seek(offset + sent)
        return sent

    def linger(self) -> None:
        """Half-close, drain what the client still sends for at most CLOSE_LINGER seconds, then shut
        the connection down completely, so that gthread's own graceful close finds nothing to wait for."""
        try:
            super().shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + CLOSE_LINGER
            while (remaining := deadline - time.monotonic()) > 0:
                super().settimeout(remaining)
                if not super().recv(65536):
                    break
        except OSError:
            pass
        try:
            super().shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


# Errors gunicorn raises while reading a request, before the app sees it: status and what to say.
CLIENT_ERRORS: tuple[tuple[type[Exception] | tuple[type[Exception], ...], int, str], ...] = (
    (http_errors.LimitRequestLine, 414,
     "the request line is longer than {limit_request_line} bytes: shorten the URL or its query string"),
    (http_errors.LimitRequestHeaders, 431, "the request headers are too large or too many: {exc}"),
    ((http_errors.InvalidChunkSize, http_errors.ChunkMissingTerminator, http_errors.InvalidChunkExtension), 400,
     "malformed chunked request body: {exc}"),
    (http_errors.UnsupportedTransferCoding, 501, "{exc}"),
    (http_errors.ExpectationFailed, 417, "{exc}"),
    (http_errors.ForbiddenProxyRequest, 403, "request forbidden"),
    # The app's fault. (New in gunicorn 27; types-gunicorn describes 26.)
    ((http_errors.InvalidResponseHeader, http_errors.InvalidResponseHeaderName), 500, ""),  # type: ignore[attr-defined]
    (http_errors.ParseException, 400, "malformed request: {exc}"),
)


def describe_error(exc: BaseException, cfg: Any) -> tuple[int, str]:
    """Status and problem detail for an error gunicorn met; 500 for anything that is not the client's."""
    for kinds, status, detail in CLIENT_ERRORS:
        if isinstance(exc, kinds):
            if status == 500:
                break
            return status, detail.format(exc=exc, limit_request_line=cfg.limit_request_line)
    return 500, "internal error; the server log has the details"


def problem_bytes(status: int, detail: str, instance: str | None) -> bytes:
    """A whole HTTP/1.1 response carrying an RFC 9457 problem, closing the connection."""
    body: dict[str, object] = {"type": "about:blank", "title": status_title(status), "status": status,
                               "detail": detail, "code": "internal_error" if status == 500 else status_code(status)}
    if instance:
        body["instance"] = instance
    payload = json.dumps(body).encode()
    head = (f"HTTP/1.1 {status} {status_title(status)}\r\nConnection: close\r\n"
            f"Content-Type: application/problem+json\r\nContent-Length: {len(payload)}\r\n"
            "X-Content-Type-Options: nosniff\r\n\r\n")
    return head.encode("latin-1") + payload


class LookalikeWorker(gthread.ThreadWorker):
    """gthread with DeadlineSocket connections and problem+json errors."""

    app: LookalikeServer
    _quitting = False

    def handle_quit(self, sig: int, frame: Any) -> None:
        """Ctrl-C or the arbiter's SIGQUIT: leave now, once, whatever the worker is doing.

        gunicorn's handler raises SystemExit wherever the signal lands. While the worker boots, that
        can be inside native code (pydantic's schema builder, TensorFlow), which turns it into an
        unrelated error and a boot failure that takes the server down with a traceback; a booting
        worker has nothing to finish, so it ends at once. A second signal while the first is handled
        (Ctrl-C pressed again, with the arbiter's own SIGQUIT) restarted the handler and its pause,
        so a worker hammered with signals never got to leave.
        """
        if not self.booted:
            self.log.info("Worker stopped while booting (pid: %s)", self.pid)
            os._exit(0)
        if self._quitting:
            return
        self._quitting = True
        super().handle_quit(sig, frame)

    def _budgets(self) -> tuple[float, float]:
        api = self.app.settings.api
        return api.read_timeout, api.send_timeout

    def enqueue_req(self, conn: Any) -> None:
        if not isinstance(conn.sock, DeadlineSocket):  # a new connection, still in the poller thread
            conn.sock = DeadlineSocket.adopt(conn.sock, *self._budgets())
        super().enqueue_req(conn)

    def handle(self, conn: Any) -> Any:
        if not conn.initialized and not conn.data_ready and not conn.wait_for_data(FIRST_BYTE_WAIT):
            return gthread._DEFER  # type: ignore[attr-defined]  # gunicorn 27; types-gunicorn describes 26
        conn.sock.begin_request()
        keep = super().handle(conn)
        if keep is False and isinstance(conn.sock, DeadlineSocket) and conn.sock.fileno() != -1:
            conn.sock.linger()  # here, in this thread, rather than in the poller thread
        return keep

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        started = datetime.now()
        addr = addr or ("", -1)
        status, detail = describe_error(exc, self.cfg)
        if status == 500:
            self.log.exception("Error handling request %s", getattr(req, "uri", "(no URI read)"))
        else:
            self.log.warning("Invalid request from ip=%s: %s", addr[0], exc)
        if req is not None:
            environ = default_environ(req, client, self.cfg)
            environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = addr[0], str(addr[1])
            resp = Response(req, client, self.cfg)
            resp.status = f"{status} {status_title(status)}"
            resp.response_length = len(detail)
            self.log.access(resp, req, environ, datetime.now() - started)
        try:
            util.write_nonblock(client, problem_bytes(status, detail, getattr(req, "path", None)))
        except Exception:  # the client may be gone: nothing more to tell it
            self.log.debug("Failed to send error message.")
