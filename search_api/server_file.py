"""`server.json` in the data dir: where the running `lookalike serve` of this data dir answers.

`lookalike search` loads the model for every run (seconds); a running server has it warm. The
server writes this small file when it listens and removes it when it stops cleanly; the command
line sends its queries there instead. A file left by a server that was killed is harmless: it is
believed only while its process lives and its URL answers /healthz with the same `instance`, a
random token each server makes up when it starts (so a port taken over by another server, or a
server of another data dir, is never mistaken for this one).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

SERVER_FILE = "server.json"
SERVER_INSTANCE = "LOOKALIKE_SERVER_INSTANCE"  # app.config key of the token /healthz answers
HEALTH_TIMEOUT = 2.0  # seconds: a server that cannot answer /healthz within this is not worth waiting for
# Wildcard listen addresses and the loopback address that reaches them from this machine.
_LOOPBACK_FOR = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "[::]": "::1"}


@dataclass(frozen=True)
class ServerInfo:
    url: str  # base URL, no trailing slash
    pid: int  # of the server's main (arbiter) process
    instance: str  # also answered by its /healthz


def new_instance() -> str:
    return secrets.token_hex(16)


def local_url(host: str, port: int) -> str:
    """The URL a client on this machine reaches a server listening on host:port at."""
    host = _LOOPBACK_FOR.get(host, host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def write_server_file(data_dir: Path, info: ServerInfo) -> Path | None:
    """Write (atomically) where this server answers; None when the data dir cannot take it."""
    path = data_dir / SERVER_FILE
    tmp = path.with_name(f".{SERVER_FILE}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(asdict(info)), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write %s (`lookalike search` will not find this server by itself): %s", path, exc)
        with contextlib.suppress(OSError):
            tmp.unlink()
        return None
    return path


def remove_server_file(data_dir: Path, instance: str) -> None:
    """Remove the file if it is still this server's (another server may have written its own since)."""
    path = data_dir / SERVER_FILE
    info = read_server_file(data_dir)
    if info is not None and info.instance == instance:
        with contextlib.suppress(OSError):
            path.unlink()


def read_server_file(data_dir: Path) -> ServerInfo | None:
    """The file's contents; None when there is none or it is not one this code wrote."""
    try:
        raw = json.loads((data_dir / SERVER_FILE).read_text(encoding="utf-8"))
        info = ServerInfo(url=str(raw["url"]).rstrip("/"), pid=int(raw["pid"]), instance=str(raw["instance"]))
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None
    return info if info.url.startswith(("http://", "https://")) and info.pid > 0 else None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def health_instance(url: str, timeout: float = HEALTH_TIMEOUT) -> str | None:
    """The `instance` a server's /healthz answers ("" for a server that gives none); None if it does not answer."""
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=timeout) as response:
            body = json.loads(response.read(65536))
    except (OSError, ValueError):
        return None
    return str(body.get("instance") or "") if isinstance(body, dict) else None


def running_server(data_dir: Path) -> ServerInfo | None:
    """The server of this data dir, when one is running and answers; else None (and why, in the debug log)."""
    info = read_server_file(data_dir)
    if info is None:
        return None
    if not pid_alive(info.pid):
        log.debug("%s names process %d, which has ended", data_dir / SERVER_FILE, info.pid)
        return None
    answered = health_instance(info.url)
    if answered != info.instance:
        log.debug("%s names %s, which %s", data_dir / SERVER_FILE, info.url,
                  "does not answer" if answered is None else "is another server")
        return None
    return info
