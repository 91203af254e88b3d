"""A real `lookalike serve` against hostile clients: slow connections, malformed framing, odd requests.

Every socket has a time-out and every wait a deadline: a server that hangs fails these tests, it
does not hang them.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import (
    RED,
    ServerProcess,
    chunked,
    colour_image,
    jpeg,
    make_colour_library,
    make_settings,
    raw_http,
    run_index,
    subprocess_env,
)
from PIL import Image

pytestmark = pytest.mark.gunicorn

BUDGET = 4  # api.read_timeout and api.send_timeout of the server under test, in seconds
MAX_UPLOAD_MB = 2
BIG_FILE = "big.bmp"
QUERY = jpeg(colour_image(RED, seed=3))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, tf1_module: Path) -> Iterator[ServerProcess]:
    """One worker with its default threads, budgets of BUDGET seconds, 1 MB of memory for request bodies
    (a second wait of 1 s at most), over the colour library plus a 27 MB BMP."""
    root = tmp_path_factory.mktemp("hostile")
    library = make_colour_library(root / "library")
    noise = np.random.default_rng(0).integers(0, 256, (3000, 3000, 3), dtype=np.uint8)
    Image.fromarray(noise).save(library / BIG_FILE)
    settings = make_settings(root / "data", tf1_module)
    assert run_index(settings, library)[0].indexed == 15
    env = subprocess_env(root / "data", tf1_module, LOOKALIKE_API__READ_TIMEOUT=str(BUDGET),
                         LOOKALIKE_API__SEND_TIMEOUT=str(BUDGET), LOOKALIKE_API__MAX_UPLOAD_MB=str(MAX_UPLOAD_MB),
                         LOOKALIKE_API__UPLOAD_MEMORY_MB="1", LOOKALIKE_API__QUEUE_TIMEOUT="1")
    with ServerProcess(env, root / "serve.log") as served:
        yield served
    assert "Traceback" not in served.output()


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Connection: close",
             *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def multipart(field: str, data: bytes) -> tuple[bytes, str]:
    boundary = "hostileboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"{field}\"; filename=\"q.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def assert_problem_answer(answer: tuple[int, dict[str, str], bytes], status: int, code: str) -> dict[str, object]:
    got, headers, body = answer
    assert got == status, body[:300]
    assert headers["content-type"] == "application/problem+json", headers
    problem = json.loads(body)
    assert problem["status"] == status and problem["code"] == code and problem["detail"], problem
    return problem


def timed_get(port: int, path: str, timeout: float) -> tuple[int, float]:
    started = time.monotonic()
    status, _, _ = raw_http(port, request_bytes("GET", path, {}), timeout=timeout)
    return status, time.monotonic() - started


def file_id(port: int) -> int:
    _, _, body = raw_http(port, request_bytes("GET", "/api/v1/images?limit=100", {}))
    return next(i["id"] for i in json.loads(body)["images"] if i["path"].endswith(BIG_FILE))


def slow_client(kind: str, port: int, image_id: int) -> socket.socket:
    sock = socket.socket()
    sock.settimeout(5)
    if kind == "unread_file":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall({
        "one_byte": b"G",
        "partial_headers": b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ",
        "partial_body": request_bytes("POST", "/api/v1/search", {"Content-Type": "image/jpeg",
                                                                   "Content-Length": "100000"}, QUERY[:100]),
        "unread_file": request_bytes("GET", f"/api/v1/images/{image_id}/file", {}),
    }[kind])
    return sock


def is_closed(sock: socket.socket) -> bool:
    """Whether the server closed the connection (what it sent before is read and dropped)."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(1 << 20):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


SLOW_KINDS = ("one_byte", "partial_headers", "partial_body", "unread_file")
FILE_SIZE = 3000 * 3000 * 3


def drain(sock: socket.socket) -> int:
    """Read a connection to its end (10 s at most); how many bytes came."""
    sock.settimeout(10)
    received = 0
    try:
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    return received


def test_slow_clients_neither_starve_the_server_nor_stay(server: ServerProcess) -> None:
    image_id = file_id(server.port)
    clients = [(kind, slow_client(kind, server.port, image_id)) for kind in SLOW_KINDS for _ in range(8)]
    opened = time.monotonic()
    try:
        time.sleep(0.5)  # every slow client is in, holding what it can
        for _ in range(3):
            status, took = timed_get(server.port, "/healthz", timeout=10)
            assert status == 200 and took < 2, took
        started = time.monotonic()
        body, content_type = multipart("image", QUERY)
        status, _, answer = raw_http(server.port, request_bytes(
            "POST", "/api/v1/search?k=2", {"Content-Type": content_type, "Content-Length": str(len(body))}, body),
            timeout=10)
        assert status == 200 and json.loads(answer)["results"], answer[:300]
        assert time.monotonic() - started < 2
        # Each is closed once its budget (BUDGET seconds to send a request) runs out.
        senders = [(kind, sock) for kind, sock in clients if kind != "unread_file"]
        while senders and time.monotonic() < opened + BUDGET + 8:
            senders = [(kind, sock) for kind, sock in senders if not is_closed(sock)]
            time.sleep(0.25)
        assert not senders, sorted({kind for kind, _ in senders})
        assert time.monotonic() - opened > BUDGET - 1  # not closed at once either: the budget applies
        # A client that reads nothing cannot see the end of the connection before the data ahead of it; read
        # only now that its budget (BUDGET seconds to read the response) is spent: the file was cut short.
        time.sleep(max(0.0, opened + BUDGET + 1 - time.monotonic()))
        for kind, sock in clients:
            if kind == "unread_file":
                received = drain(sock)
                assert 0 < received < FILE_SIZE
    finally:
        for _, sock in clients:
            sock.close()
    status, took = timed_get(server.port, "/healthz", timeout=10)
    assert status == 200 and took < 1


def test_a_body_cut_short_by_the_budget_is_408(server: ServerProcess) -> None:
    sock = slow_client("partial_body", server.port, 0)
    try:
        sock.settimeout(BUDGET + 10)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    finally:
        sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert json.loads(body)["code"] == "request_timeout"
    assert b"api.read_timeout" in body


def test_errors_before_the_app_are_problems_too(server: ServerProcess) -> None:
    port = server.port
    problem = assert_problem_answer(raw_http(port, request_bytes("GET", "/api/v1/images?class=" + "x" * 5000, {})),
                                    414, "uri_too_long")
    assert "4094" in str(problem["detail"])
    assert_problem_answer(raw_http(port, b"NOT A REQUEST\r\n\r\n"), 400, "bad_request")
    assert_problem_answer(raw_http(port, request_bytes("POST", "/api/v1/search", {"Content-Length": "ten"})),
                          400, "bad_request")
    assert_problem_answer(raw_http(port, request_bytes("POST", "/api/v1/search", {
        "Content-Length": "4", "Transfer-Encoding": "chunked"}, b"0\r\n\r\n")), 400, "bad_request")
    many = {f"X-H{i}": "v" for i in range(200)}
    assert_problem_answer(raw_http(port, request_bytes("GET", "/healthz", many)), 431,
                          "request_header_fields_too_large")


BAD_CHUNKS = b"zz\r\n" + QUERY[:64] + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize("route", ["raw", "multipart", "batch"])
def test_malformed_chunked_bodies_are_400(server: ServerProcess, route: str) -> None:
    path = "/api/v1/search/batch" if route == "batch" else "/api/v1/search"
    content_type = "image/jpeg" if route == "raw" else "multipart/form-data; boundary=hostileboundary"
    answer = raw_http(server.port, request_bytes("POST", path, {"Content-Type": content_type,
                                                               "Transfer-Encoding": "chunked"}, BAD_CHUNKS))
    problem = assert_problem_answer(answer, 400, "bad_request")
    assert "chunk" in str(problem["detail"])


@pytest.mark.parametrize("route", ["raw", "multipart", "batch"])
def test_chunked_bodies_over_the_limit_are_413(server: ServerProcess, route: str) -> None:
    limit = MAX_UPLOAD_MB * 2**20
    image = QUERY + b"\0" * (limit + 4096 - len(QUERY))  # a JPEG with trailing bytes decodes fine if let through
    if route == "raw":
        path, body, content_type = "/api/v1/search", image, "image/jpeg"
    else:
        path = "/api/v1/search/batch" if route == "batch" else "/api/v1/search"
        body, content_type = multipart("images" if route == "batch" else "image", image)
    payload = request_bytes("POST", path, {"Content-Type": content_type, "Transfer-Encoding": "chunked"},
                            chunked(*(body[i:i + 65536] for i in range(0, len(body), 65536))))
    problem = assert_problem_answer(raw_http(server.port, payload), 413, "request_entity_too_large")
    assert "api.max_upload_mb" in str(problem["detail"])


def test_a_chunked_body_within_the_limit_is_searched(server: ServerProcess) -> None:
    answer = raw_http(server.port, request_bytes("POST", "/api/v1/search?k=2", {
        "Content-Type": "image/jpeg", "Transfer-Encoding": "chunked"}, chunked(QUERY[:1000], QUERY[1000:])))
    assert answer[0] == 200 and len(json.loads(answer[2])["results"]) == 2


def test_large_uploads_wait_for_their_share_of_memory(server: ServerProcess) -> None:
    """With 64 threads, 64 uploads of api.max_upload_mb would sit in memory at once: their total is bounded."""
    hog = socket.create_connection(("127.0.0.1", server.port), timeout=10)  # holds 1 MB while it trickles
    try:
        hog.sendall(request_bytes("POST", "/api/v1/search", {"Content-Type": "image/jpeg",
                                                             "Content-Length": str(2**20)}, QUERY[:100]))
        time.sleep(0.5)
        padded = QUERY + b"\0" * (300_000 - len(QUERY))  # a JPEG decodes with trailing bytes
        started = time.monotonic()
        answer = raw_http(server.port, request_bytes("POST", "/api/v1/search", {
            "Content-Type": "image/jpeg", "Content-Length": str(len(padded))}, padded))
        problem = assert_problem_answer(answer, 503, "server_busy")
        assert "api.upload_memory_mb" in str(problem["detail"]) and answer[1]["retry-after"]
        assert 0.9 < time.monotonic() - started < 3
        small = raw_http(server.port, request_bytes("POST", "/api/v1/search?k=1", {
            "Content-Type": "image/jpeg", "Content-Length": str(len(QUERY))}, QUERY))
        assert small[0] == 200  # small bodies need no share
        assert drain(hog) > 0  # the hog runs out of time (408) and gives its share back
        answer = raw_http(server.port, request_bytes("POST", "/api/v1/search?k=1", {
            "Content-Type": "image/jpeg", "Content-Length": str(len(padded))}, padded))
        assert answer[0] == 200
    finally:
        hog.close()
