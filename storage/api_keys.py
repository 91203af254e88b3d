"""API keys and sign-in sessions in the catalog: created, listed, revoked, looked up; secrets never stored.

A key is `lookalike_` followed by 43 characters of 256 random bits: the prefix lets secret scanners and
people recognise one, the randomness makes its SHA-256 as good as the key for lookup and useless to
anyone who reads the catalog. Servers read the keys from here (search_api.access caches them for a
second), so a key created or revoked by the CLI counts in every worker within moments.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from storage.catalog import Catalog
from storage.errors import CatalogError
from storage.key_schema import ApiKeyRow, ApiSessionRow

log = logging.getLogger(__name__)

SCOPES = ("read", "write", "admin")  # each includes the ones before it
KEY_PREFIX = "lookalike_"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
# How long a writer may hold up the bookkeeping of "last used" before it is skipped until next time.
LAST_USED_WAIT_MS = 500


class KeyProblem(ValueError):
    """A key cannot be created or revoked as asked; the message says why."""


@dataclass(frozen=True)
class KeyInfo:
    """What may be shown of a key: never its secret nor its hash."""

    name: str
    scope: str
    created_at: datetime
    last_used_at: datetime | None


@dataclass(frozen=True)
class StoredKey:
    id: int
    name: str
    scope: str
    key_hash: str


@dataclass(frozen=True)
class StoredSession:
    key_id: int
    csrf_token: str
    expires_at: datetime


def hash_secret(secret: str) -> str:
    """Hex SHA-256 of a key or session token (a fast hash suffices: the secrets carry 256 random bits)."""
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


def scope_allows(held: str, needed: str) -> bool:
    """Does a key of scope `held` include scope `needed`?"""
    return held in SCOPES and SCOPES.index(held) >= SCOPES.index(needed)


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise KeyProblem(f"key name {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a "
                        "letter or digit")
    return name


class ApiKeys:
    """The keys and sessions of one catalog."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def create(self, name: str, scope: str) -> str:
        """Store a new key and return its secret: the only time anyone sees it."""
        check_name(name)
        if scope not in SCOPES:
            raise KeyProblem(f"scope {scope!r}: expected one of {', '.join(SCOPES)}")
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        try:
            with self.catalog.session() as s, s.begin():
                s.add(ApiKeyRow(name=name, scope=scope, key_hash=hash_secret(secret)))
        except IntegrityError:
            raise KeyProblem(f"a key named {name!r} exists already: revoke it first "
                            f"(`lookalike keys revoke {name}`) or choose another name") from None
        log.info("created API key %s (scope %s)", name, scope)
        return secret

    def listed(self) -> list[KeyInfo]:
        with self.catalog.session() as s:
            rows = s.execute(select(ApiKeyRow.name, ApiKeyRow.scope, ApiKeyRow.created_at, ApiKeyRow.last_used_at)
                             .order_by(ApiKeyRow.name))
            return [KeyInfo(*row) for row in rows]

    def revoke(self, name: str) -> None:
        """Delete the key and every session signed in with it."""
        with self.catalog.session() as s, s.begin():
            key_id = s.scalar(select(ApiKeyRow.id).where(ApiKeyRow.name == name))
            if key_id is None:
                raise KeyProblem(f"no key named {name!r} (`lookalike keys list` shows them)")
            s.execute(delete(ApiSessionRow).where(ApiSessionRow.key_id == key_id))
            s.execute(delete(ApiKeyRow).where(ApiKeyRow.id == key_id))
        log.info("revoked API key %s", name)

    def active(self) -> list[StoredKey]:
        with self.catalog.session() as s:
            rows = s.execute(select(ApiKeyRow.id, ApiKeyRow.name, ApiKeyRow.scope, ApiKeyRow.key_hash))
            return [StoredKey(*row) for row in rows]

    def count(self) -> int:
        return len(self.active())

    def mark_used(self, used: Mapping[int, datetime]) -> bool:
        """Record when keys were last used; skipped (False) when a writer holds the catalog longer than
        LAST_USED_WAIT_MS: bookkeeping never holds up the request that triggered it."""
        if not used:
            return True
        engine = self.catalog.engine
        sqlite = engine.dialect.name == "sqlite"
        try:
            with engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                if sqlite and raw is not None:
                    raw.execute(f"PRAGMA busy_timeout={LAST_USED_WAIT_MS}")
                try:
                    with conn.begin():
                        if not sqlite:
                            conn.exec_driver_sql(f"SET LOCAL lock_timeout = {LAST_USED_WAIT_MS}")
                        for key_id, when in used.items():
                            conn.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(last_used_at=when))
                finally:
                    if sqlite and raw is not None:
                        raw.execute("PRAGMA busy_timeout=30000")
        except (CatalogError, SQLAlchemyError) as exc:
            log.debug("last use of keys not recorded this time: %s", exc)
            return False
        return True

    # --- sessions of the web page -------------------------------------------------------

    def start_session(self, key_id: int, lifetime: timedelta) -> tuple[str, str]:
        """A new session of key `key_id`: (cookie token, CSRF token). Expired sessions are dropped here."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = datetime.now(timezone.utc)
        with self.catalog.session() as s, s.begin():
            s.execute(delete(ApiSessionRow).where(ApiSessionRow.expires_at < now))
            s.add(ApiSessionRow(token_hash=hash_secret(token), key_id=key_id, csrf_token=csrf,
                                expires_at=now + lifetime))
        return token, csrf

    def session(self, token: str) -> StoredSession | None:
        with self.catalog.session() as s:
            row = s.execute(select(ApiSessionRow.key_id, ApiSessionRow.csrf_token, ApiSessionRow.expires_at)
                            .where(ApiSessionRow.token_hash == hash_secret(token))).first()
        if row is None:
            return None
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=timezone.utc)
        return StoredSession(row.key_id, row.csrf_token, expires)

    def end_session(self, token: str) -> None:
        with self.catalog.session() as s, s.begin():
            s.execute(delete(ApiSessionRow).where(ApiSessionRow.token_hash == hash_secret(token)))
