"""Who may do what: every request passes one `before_request` check, never a check route by route.

Each endpoint has a required scope in ENDPOINT_SCOPES (an endpoint missing there needs admin, so a
new route is closed until someone decides; tests/test_access.py walks the URL map to keep it so).
A request proves a scope with an API key (`Authorization: Bearer KEY` or `X-API-Key: KEY`) or with
the web page's session cookie; writes made with the cookie also carry the session's CSRF token in
`X-CSRF-Token`. Keys are read from the catalog and cached for KEY_CACHE_SECONDS, so a key revoked
by `lookalike keys revoke` stops working in every worker within two seconds.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit

from flask import Flask, Response, g, request

from indexer.settings import Settings, is_loopback
from search_api.current import current_service
from search_api.problems import problem_response
from storage.api_keys import SCOPES, ApiKeys, StoredKey, StoredSession, hash_secret, scope_allows
from storage.errors import CatalogMissingError
from storage.paths import printable

log = logging.getLogger(__name__)

OPEN = "open"  # no key needed
SCOPE_ORDER = SCOPES
# The scope each endpoint needs. The page, its script and styles, the API docs and this API's own
# description are open: they are the same for every installation and hold nothing of the library.
ENDPOINT_SCOPES: dict[str, str] = {
    "health.healthz": OPEN,
    "health.readyz": OPEN,
    "page.index": OPEN,
    "static": OPEN,
    "swagger_ui.docs_page": OPEN,
    "swagger_ui.asset": OPEN,
    "docs.openapi_json": OPEN,
    "session.get_session": OPEN,  # says whether keys are needed and what the caller may do
    "session.start_session": OPEN,  # the sign-in itself (failures count towards the limit)
    "session.end_session": OPEN,
    "browse.classes": "read",
    "browse.images": "read",
    "images.image": "read",
    "images.image_file": "read",
    "images.image_thumbnail": "read",
    "images.stats": "read",
    "search.search": "read",
    "search.search_batch": "read",
    "search.similar": "read",
    "duplicates.duplicates": "read",
    "labels.list_labels": "read",
    "labels.get_label": "read",
    "labels.label_members": "read",
    "labels.create_label": "write",
    "labels.change_label": "write",
    "labels.delete_label": "write",
    "library.add_image": "write",
    "library.remove_image": "write",
    "jobs.get_jobs": "read",
    "activity.get_activity": "read",
    "jobs.get_job": "read",
    "jobs.start_index": "admin",  # starting index runs is the admin scope (write + jobs + metrics)
    "metrics.metrics": "admin",  # open with api.metrics_public
}
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
KEY_CACHE_SECONDS = 1.0
LAST_USED_EVERY_SECONDS = 60.0
SESSION_LIFETIME = timedelta(days=7)
SESSION_COOKIE = "lookalike_session"
CSRF_HEADER = "X-CSRF-Token"
FAILURE_WINDOW_SECONDS = 60.0
FAILURES_ALLOWED = 10  # distinct wrong keys from one address within the window; more answer 429
TRACKED_ADDRESSES = 10_000
IPV6_CLIENT_PREFIX = 64  # one IPv6 host commonly holds a whole /64 and may use a new address per request


def address_block(address: str) -> str:
    """What the failure limit counts as one client: an IPv4 address (also as ::ffff:a.b.c.d), an IPv6 /64."""
    try:
        parsed = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, IPV6_CLIENT_PREFIX), strict=False))
    return str(parsed)


def required_scope(endpoint: str | None, settings: Settings) -> str:
    """The scope an endpoint needs: OPEN, read, write or admin (admin for an endpoint nobody classified)."""
    if endpoint == "metrics.metrics" and settings.api.metrics_public:
        return OPEN
    return ENDPOINT_SCOPES.get(endpoint or "", "admin")


@dataclass(frozen=True)
class Access:
    """Who is asking: the key's name and scope, and how it was shown (key, cookie, or open when none is needed)."""

    name: str | None
    scope: str
    via: str
    session: StoredSession | None = None


class FailureLimiter:
    """Distinct wrong keys per client address in a sliding window: a brute force gets FAILURES_ALLOWED
    guesses a minute, while a client that keeps sending one stale (revoked) key locks nobody out."""

    def __init__(self, allowed: int = FAILURES_ALLOWED, window: float = FAILURE_WINDOW_SECONDS) -> None:
        self.allowed, self.window = allowed, window
        self._failures: dict[str, dict[str, float]] = {}  # address -> {fingerprint of a wrong key: last seen}
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int:
        """Seconds until `address` may try again (0: now)."""
        now, address = time.monotonic(), address_block(address)
        with self._lock:
            seen = self._failures.get(address)
            if not seen:
                return 0
            for fingerprint in [f for f, when in seen.items() if when <= now - self.window]:
                del seen[fingerprint]
            if len(seen) < self.allowed:
                return 0
            return max(1, int(min(seen.values()) + self.window - now + 0.999))

    def failed(self, address: str, secret: str) -> None:
        now, address = time.monotonic(), address_block(address)
        with self._lock:
            if len(self._failures) >= TRACKED_ADDRESSES and address not in self._failures:
                self._forget_quiet(now)
            self._failures.setdefault(address, {})[hash_secret(secret)[:32]] = now

    def _forget_quiet(self, now: float) -> None:
        quiet = [a for a, seen in self._failures.items() if not seen or max(seen.values()) <= now - self.window]
        for address in quiet or list(self._failures)[: len(self._failures) // 2]:
            del self._failures[address]


class KeyRing:
    """The catalog's keys and sessions as one worker sees them: re-read at most every KEY_CACHE_SECONDS."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._keys: list[StoredKey] = []
        self._loaded = -1e9
        self._sessions: dict[str, tuple[float, StoredSession | None]] = {}
        self._used: dict[int, datetime] = {}
        self._used_flushed = time.monotonic()

    def keys(self, books: ApiKeys | None) -> list[StoredKey]:
        now = time.monotonic()
        if now - self._loaded < KEY_CACHE_SECONDS:
            return self._keys
        with self._lock:
            if now - self._loaded >= KEY_CACHE_SECONDS:
                self._keys = books.active() if books is not None else []
                self._sessions = {t: v for t, v in self._sessions.items() if now - v[0] < KEY_CACHE_SECONDS}
                self._loaded = now
        return self._keys

    def match(self, books: ApiKeys | None, secret: str) -> StoredKey | None:
        """The key whose hash equals the secret's, compared in constant time against every key."""
        digest = hash_secret(secret)
        found = None
        for key in self.keys(books):
            if hmac.compare_digest(key.key_hash, digest):
                found = key
        return found

    def by_id(self, books: ApiKeys | None, key_id: int) -> StoredKey | None:
        return next((k for k in self.keys(books) if k.id == key_id), None)

    def session(self, books: ApiKeys | None, token: str) -> StoredSession | None:
        digest = hash_secret(token)
        now = time.monotonic()
        cached = self._sessions.get(digest)
        if cached is not None and now - cached[0] < KEY_CACHE_SECONDS:
            return cached[1]
        stored = books.session(token) if books is not None else None
        self._sessions[digest] = (now, stored)
        return stored

    def used(self, books: ApiKeys | None, key: StoredKey) -> None:
        """Note a use; written to the catalog at most every LAST_USED_EVERY_SECONDS (and at once the first time)."""
        now = time.monotonic()
        with self._lock:
            first = key.id not in self._used
            self._used[key.id] = datetime.now(timezone.utc)
            if books is None or not (first or now - self._used_flushed >= LAST_USED_EVERY_SECONDS):
                return
            pending, self._used_flushed = dict(self._used), now
        books.mark_used(pending)

    def forget_session(self, token: str) -> None:
        self._sessions.pop(hash_secret(token), None)


def _books() -> ApiKeys | None:
    """The keys of the served catalog (None while no catalog exists: then no key is valid)."""
    try:
        return ApiKeys(current_service().catalog)
    except CatalogMissingError:
        return None


def ring() -> KeyRing:
    from flask import current_app

    return current_app.extensions["lookalike_keys"]


FORWARDED_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def keys_required() -> bool:
    """Does this request need a key? With api.auth: auto on a loopback address, a request that a reverse
    proxy forwarded (it names the client in Forwarded or X-Forwarded-For) came from beyond this machine."""
    api = current_service().settings.api
    if api.keys_required():
        return True
    return api.auth == "auto" and any(name in request.headers for name in FORWARDED_HEADERS)


def client_address() -> str:
    """The client's address: the peer, or when the peer is a proxy on this machine, the address that proxy
    saw (the last X-Forwarded-For entry, which it appended itself), so one client's failures lock out only it."""
    peer = request.remote_addr or "unknown"
    forwarded = request.headers.get("X-Forwarded-For", "")
    if forwarded and is_loopback(peer):
        return forwarded.rsplit(",", 1)[-1].strip() or peer
    return peer


def presented_key() -> str | None:
    """The key a request carries in `Authorization: Bearer` or `X-API-Key` (never logged)."""
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    header = request.headers.get("X-API-Key", "").strip()
    return header or None


def identify() -> Access | None:
    """Who the request is, by key or session cookie; None when it shows neither or one that is not valid."""
    if not keys_required():
        return Access(None, "admin", OPEN)
    keyring, books = ring(), _books()
    secret = presented_key()
    if secret is not None:
        key = keyring.match(books, secret)
        if key is None:
            return None
        keyring.used(books, key)
        return Access(key.name, key.scope, "key")
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    session = keyring.session(books, token)
    if session is None or session.expires_at <= datetime.now(timezone.utc):
        return None
    key = keyring.by_id(books, session.key_id)
    if key is None:  # revoked: its sessions went with it
        return None
    keyring.used(books, key)
    return Access(key.name, key.scope, "cookie", session)


def unauthorized(detail: str, code: str = "unauthorized") -> Response:
    response = problem_response(401, detail, code)
    response.headers["WWW-Authenticate"] = 'Bearer realm="lookalike"' + (
        ', error="invalid_token"' if code == "invalid_key" else "")
    return response


def too_many_failures(retry_after: int) -> Response:
    response = problem_response(429, f"too many requests with a wrong key from this address; try again in "
                                f"{retry_after} s", "too_many_failures")
    response.headers["Retry-After"] = str(retry_after)
    return response


def _same_origin() -> bool:
    """A request made with the cookie comes from this site: its Origin (when sent) names this host."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == request.host.lower()


def _check_access() -> Response | None:
    scope = required_scope(request.endpoint, current_service().settings)
    g.required_scope = scope
    if scope == OPEN or request.url_rule is None:
        return None
    if not keys_required():
        g.access = Access(None, "admin", OPEN)
        return None
    failures = limiter()
    address = client_address()
    wait = failures.retry_after(address)
    if wait:
        return too_many_failures(wait)
    shown = presented_key() is not None or SESSION_COOKIE in request.cookies
    access = identify()
    if access is None:
        if not shown:
            return unauthorized("this server needs an API key: send `Authorization: Bearer KEY` or "
                                "`X-API-Key: KEY` (`lookalike keys create NAME` makes one), or sign in on the page")
        failures.failed(address, presented_key() or request.cookies.get(SESSION_COOKIE, ""))
        log.warning("refused a wrong or revoked key from %s for %s %s", printable(address), request.method,
                    printable(request.path))
        return unauthorized("the API key or session is not valid (wrong, revoked or expired)", "invalid_key")
    if access.via == "cookie" and request.method not in SAFE_METHODS:
        expected = access.session.csrf_token if access.session else ""
        given = request.headers.get(CSRF_HEADER, "")
        if not _same_origin() or not hmac.compare_digest(given.encode(), expected.encode()):
            return problem_response(403, f"a change made with the page's session needs its {CSRF_HEADER} header, "
                                    "from this site", "csrf_failed")
    if not scope_allows(access.scope, scope):
        return problem_response(403, f"the key {access.name!r} has scope {access.scope}; {request.method} "
                                f"{request.url_rule.rule} needs scope {scope}", "insufficient_scope",
                                required_scope=scope, key_scope=access.scope)
    g.access = access
    return None


def limiter() -> FailureLimiter:
    from flask import current_app

    return current_app.extensions["lookalike_failures"]


def _private(response: Response) -> Response:
    """Answers that needed a key are for that key's holder only: no shared cache may keep them."""
    if g.get("required_scope", OPEN) != OPEN and keys_required():
        response.cache_control.public = False
        response.cache_control.private = True
        response.vary.update(("Authorization", "X-API-Key", "Cookie"))
    return response


def init_app(app: Flask) -> None:
    """Install the check (after the metrics' timer, so refused requests are counted too, and before any view)."""
    app.extensions["lookalike_keys"] = KeyRing()
    app.extensions["lookalike_failures"] = FailureLimiter()
    app.before_request(_check_access)
    app.after_request(_private)
