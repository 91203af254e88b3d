"""Catalog tables of API keys and the page's sign-in sessions: only hashes of their secrets are stored.

A key's secret is shown once when it is created; the catalog keeps its SHA-256, which is enough to
recognise it and useless to anyone who reads the database. A session belongs to a key and goes with it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from storage.schema import Base, _now


class ApiKeyRow(Base):
    """A named key with one scope (read, write or admin)."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    scope: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # hex SHA-256 of the whole key
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ApiSessionRow(Base):
    """A browser's sign-in: the cookie's token (hashed) stands for its key until it expires or the key goes."""

    __tablename__ = "api_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))  # not a credential alone: writes need it beside the cookie
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=_now)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
