"""`lookalike search` through a running server: the model stays loaded there, so a search takes a second,
not the 12-22 s of loading it for every command.

Only the standard library is used on this path (no TensorFlow, no Flask), since importing is most of
what a fast search costs. The server is the one named by `--server URL`, else the one serving this data
dir (search_api.server_file); the answer is printed exactly as a search in this process prints it.
"""

from __future__ import annotations

import json
import logging
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from search_api.server_file import health_instance, read_server_file, running_server

log = logging.getLogger(__name__)

SEARCH_TIMEOUT = 300.0  # seconds for one query: a busy server queues it (and says 503 when it cannot)
MAX_FILE_BYTES = 512 * 2**20  # a result's file fetched for a contact sheet
URL_FIELDS = ("file_url", "thumbnail_url")  # in the API's hits, not in the command line's JSON


class ServerUnreachable(Exception):
    """The server did not answer, or answered that it cannot search now (503): searching here may still work."""


class ServerProblem(Exception):
    """The server answered the query with an error it explains (a problem object)."""

    def __init__(self, status: int, code: str, detail: str, url: str, parameter: str = "") -> None:
        super().__init__(f"{url} answered {status}: {detail}")
        self.status, self.code, self.detail, self.url, self.parameter = status, code, detail, url, parameter


@dataclass
class SearchServer:
    url: str
    explicit: bool  # named by --server: failures are errors, not a reason to search here
    same_data_dir: bool  # the server serves the configured data dir: its ids are this catalog's
    key: str | None = None
    file_urls: dict[int, str] = field(default_factory=dict)  # result id -> its file's path on the server

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"} if self.key else {}


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme.lower(), parts.netloc.lower()


class _KeyStaysHome(urllib.request.HTTPRedirectHandler):
    """urllib sends every header along a redirect, Authorization included: drop it when the redirect
    leaves the origin the key was sent to."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _origin(newurl) != _origin(req.full_url):
            new.remove_header("Authorization")
        return new


_OPENER = urllib.request.build_opener(_KeyStaysHome())


def read_key(path: Path) -> str:
    """The access key in `path`, stripped (raises ValueError when there is none)."""
    key = path.read_text(encoding="utf-8").strip()
    if not key:
        raise ValueError("the file is empty")
    if any(c.isspace() or not c.isprintable() for c in key):
        raise ValueError("the key holds whitespace or control characters")
    return key


def find_server(data_dir: Path, url: str | None, key: str | None) -> SearchServer | None:
    """The server to send queries to: `url` as given, else this data dir's running server, else None."""
    if url is None:
        info = running_server(data_dir)
        return None if info is None else SearchServer(info.url, explicit=False, same_data_dir=True, key=key)
    url = url.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    local = read_server_file(data_dir)
    same = local is not None and health_instance(url) == local.instance
    return SearchServer(url, explicit=True, same_data_dir=same, key=key)


def search_params(k: int, classes: Sequence[str], class_rule: str, class_min_probability: float | None,
                  min_score: float | None) -> list[tuple[str, str]]:
    """The query string of /api/v1/search for the command's options."""
    params = [("k", str(k)), ("class_rule", class_rule)] + [("class", c) for c in classes]
    if class_min_probability is not None:
        params.append(("class_min_probability", repr(class_min_probability)))
    if min_score is not None:
        params.append(("min_score", repr(min_score)))
    return params


def search(server: SearchServer, image: bytes, params: list[tuple[str, str]]) -> dict[str, Any]:
    """POST one image to /api/v1/search; its answer with the hits as the command line shows them (no URLs)."""
    url = f"{server.url}/api/v1/search?{urllib.parse.urlencode(params)}"
    boundary = secrets.token_hex(16)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"query\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode() + image + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, data=body, method="POST", headers={
        **server.headers(), "Content-Type": f"multipart/form-data; boundary={boundary}"})
    answer = _json(_open(request, server.url))
    hits = []
    for hit in answer.get("results", []):
        if isinstance(hit.get("file_url"), str):
            server.file_urls[int(hit["id"])] = hit["file_url"]
        hits.append({k: v for k, v in hit.items() if k not in URL_FIELDS})
    return {"labels": answer["query"]["labels"], "results": hits}


def fetch_file(server: SearchServer, image_id: int) -> bytes | None:
    """A result's file from the server (for a contact sheet); None when it cannot be had."""
    path = server.file_urls.get(image_id)
    if path is None:
        return None
    url = urllib.parse.urljoin(server.url + "/", path.lstrip("/"))
    same_origin = _origin(url) == _origin(server.url)  # an answer may name another origin: no key for it
    request = urllib.request.Request(url, headers=server.headers() if same_origin else {})
    try:
        with _OPENER.open(request, timeout=SEARCH_TIMEOUT) as response:
            data: bytes = response.read(MAX_FILE_BYTES + 1)
    except (OSError, ValueError) as exc:
        log.warning("cannot fetch image %d from %s: %s", image_id, server.url, exc)
        return None
    return data if len(data) <= MAX_FILE_BYTES else None


def _open(request: urllib.request.Request, base: str) -> bytes:
    try:
        with _OPENER.open(request, timeout=SEARCH_TIMEOUT) as response:
            return bytes(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            body = exc.read(65536)
        problem = _problem(body)
        if exc.code == 503:
            raise ServerUnreachable(f"{base} answered 503: {problem.get('detail', exc.reason)}") from None
        raise ServerProblem(exc.code, str(problem.get("code", "")), str(problem.get("detail", exc.reason)),
                            base, str(problem.get("parameter", ""))) from None
    except (OSError, ValueError) as exc:  # refused, reset, timed out, not HTTP
        raise ServerUnreachable(f"{base} did not answer: {getattr(exc, 'reason', None) or exc}") from None


def _problem(body: bytes) -> dict[str, Any]:
    try:
        problem = json.loads(body)
    except ValueError:
        return {}
    return problem if isinstance(problem, dict) else {}


def _json(body: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(body)
    except ValueError:
        raise ServerUnreachable("the server's answer is not JSON") from None
    if not isinstance(answer, dict) or not isinstance(answer.get("query"), dict):
        raise ServerUnreachable("the server's answer is not a search result")
    return answer
