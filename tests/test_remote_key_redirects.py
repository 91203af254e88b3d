"""`lookalike search --server URL --key-file FILE` sends its key to that server's origin only: not along a
redirect to another host or port, nor to a file URL of another origin that an answer names."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lookalike.remote_search import SearchServer, fetch_file, search

KEY = "lookalike_" + "s" * 43


@contextmanager
def recording_server(answer: Any) -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP server on a free port answering `answer(base, path)`: (status, headers, body); it notes headers."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            seen.append(dict(self.headers))
            status, headers, body = answer(base, self.path)
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = _any

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield base, seen
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def hits_answer(file_url: str) -> bytes:
    return json.dumps({"query": {"labels": []}, "results": [{"id": 7, "score": 1.0, "file_url": file_url}]}).encode()


def test_the_key_does_not_follow_a_redirect_or_a_file_url_to_another_origin() -> None:
    with recording_server(lambda base, path: (200, {"Content-Type": "application/json"}, hits_answer("/x"))) as (
            elsewhere, seen_elsewhere):
        def server_side(base: str, path: str) -> tuple[int, dict[str, str], bytes]:
            if path.startswith("/api/v1/search"):
                return 302, {"Location": f"{elsewhere}/api/v1/search"}, b""
            if path.startswith("/moved"):
                return 307, {"Location": f"{elsewhere}/api/v1/images/9/file"}, b""
            return 200, {"Content-Type": "image/jpeg"}, b"jpeg"

        with recording_server(server_side) as (base, seen_here):
            server = SearchServer(base, explicit=True, same_data_dir=False, key=KEY)
            try:
                search(server, b"image", [("k", "1")])
            except Exception:  # noqa: BLE001 - whatever the answer, the key must not have gone along
                pass
            assert seen_here and seen_here[0].get("Authorization") == f"Bearer {KEY}"
            assert all(KEY not in json.dumps(h) for h in seen_elsewhere), "the key followed a redirect"

            seen_elsewhere.clear()
            server.file_urls[7] = f"{elsewhere}/api/v1/images/7/file"  # named by an answer: another origin
            fetch_file(server, 7)
            assert all(KEY not in json.dumps(h) for h in seen_elsewhere), "the key went to another origin"
            server.file_urls[9] = "/moved"  # this origin, redirected to another
            fetch_file(server, 9)
            assert all(KEY not in json.dumps(h) for h in seen_elsewhere), "the key followed a redirect"
            server.file_urls[8] = "/api/v1/images/8/file"
            assert fetch_file(server, 8) == b"jpeg"
            assert seen_here[-1].get("Authorization") == f"Bearer {KEY}"
