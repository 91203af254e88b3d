"""API keys in the catalog and `lookalike keys ...`: only hashes stored, listed without secrets, revoked."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from helpers import env_for

from lookalike.cli import cli
from storage.api_keys import KEY_PREFIX, ApiKeys, KeyProblem, hash_secret, scope_allows
from storage.catalog import Catalog
from storage.schema_migrations import downgrade, upgrade


def test_a_key_is_stored_only_as_its_hash(catalog: Catalog) -> None:
    keys = ApiKeys(catalog)
    secret = keys.create("phone", "read")
    assert secret.startswith(KEY_PREFIX) and len(secret) >= len(KEY_PREFIX) + 43
    with catalog.engine.connect() as conn:
        rows = [tuple(str(v) for v in row) for row in conn.execute(sa.text("SELECT * FROM api_keys"))]
    assert len(rows) == 1 and hash_secret(secret) in rows[0]
    assert not any(secret in value or secret[len(KEY_PREFIX):] in value for value in rows[0])
    (stored,) = keys.active()
    assert (stored.name, stored.scope, stored.key_hash) == ("phone", "read", hash_secret(secret))
    assert keys.create("laptop", "write") != secret


def test_names_and_scopes_are_checked(catalog: Catalog) -> None:
    keys = ApiKeys(catalog)
    keys.create("phone", "read")
    with pytest.raises(KeyProblem, match="exists already"):
        keys.create("phone", "admin")
    with pytest.raises(KeyProblem, match="scope 'root'"):
        keys.create("other", "root")
    with pytest.raises(KeyProblem, match="key name"):
        keys.create("bad name\n", "read")
    with pytest.raises(KeyProblem, match="no key named 'ghost'"):
        keys.revoke("ghost")
    assert [k.name for k in keys.listed()] == ["phone"]


def test_revoking_drops_the_key_and_its_sessions(catalog: Catalog) -> None:
    keys = ApiKeys(catalog)
    keys.create("phone", "write")
    (stored,) = keys.active()
    token, csrf = keys.start_session(stored.id, timedelta(hours=1))
    session = keys.session(token)
    assert session is not None and session.key_id == stored.id and session.csrf_token == csrf
    assert session.expires_at > datetime.now(timezone.utc)
    keys.revoke("phone")
    assert keys.active() == [] and keys.session(token) is None
    keys.create("phone", "read")  # the name is free again


def test_last_use_is_recorded(catalog: Catalog) -> None:
    keys = ApiKeys(catalog)
    keys.create("phone", "read")
    (stored,) = keys.active()
    assert keys.listed()[0].last_used_at is None
    when = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
    assert keys.mark_used({stored.id: when})
    used = keys.listed()[0].last_used_at
    assert used is not None and used.replace(tzinfo=timezone.utc) == when


def test_scopes_include_the_ones_below() -> None:
    assert scope_allows("admin", "write") and scope_allows("write", "read") and scope_allows("read", "read")
    assert not scope_allows("read", "write") and not scope_allows("write", "admin")
    assert not scope_allows("root", "read")


def test_migration_0007_goes_down_and_up_again(database_url: str) -> None:
    catalog = Catalog(database_url)
    try:
        ApiKeys(catalog).create("phone", "read")
        downgrade(catalog.engine, "0006")
        assert "api_keys" not in sa.inspect(catalog.engine).get_table_names()
        upgrade(catalog.engine)
        assert {"api_keys", "api_sessions"} <= set(sa.inspect(catalog.engine).get_table_names())
        assert ApiKeys(catalog).active() == []
    finally:
        catalog.close()


def test_cli_creates_lists_and_revokes_keys(tmp_path: Path, tf1_module: Path) -> None:
    env = env_for(tmp_path / "data", tf1_module)
    runner = CliRunner()
    created = runner.invoke(cli, ["keys", "create", "phone", "--scope", "write"], env=env)
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert secret.startswith(KEY_PREFIX) and "\n" not in secret
    assert "shown only this once" in created.stderr

    listed = runner.invoke(cli, ["keys", "list", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert row["name"] == "phone" and row["scope"] == "write" and row["created"] and row["last_used"] is None
    human = runner.invoke(cli, ["keys", "list"], env=env)
    assert "phone" in human.stdout and "never" in human.stdout
    for out in (listed.output, human.output):
        assert secret not in out and secret[len(KEY_PREFIX):] not in out and hash_secret(secret) not in out

    again = runner.invoke(cli, ["keys", "create", "phone"], env=env)
    assert again.exit_code == 1 and "exists already" in again.output
    bad_scope = runner.invoke(cli, ["keys", "create", "x", "--scope", "root"], env=env)
    assert bad_scope.exit_code == 2

    revoked = runner.invoke(cli, ["keys", "revoke", "phone"], env=env)
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    gone = runner.invoke(cli, ["keys", "revoke", "phone"], env=env)
    assert gone.exit_code == 1 and "no key named 'phone'" in gone.output
    assert json.loads(runner.invoke(cli, ["keys", "list", "--json"], env=env).stdout) == []


def test_cli_listing_keys_of_no_catalog_creates_nothing(tmp_path: Path, tf1_module: Path) -> None:
    env = env_for(tmp_path / "data", tf1_module)
    result = CliRunner().invoke(cli, ["keys", "list"], env=env)
    assert result.exit_code == 1 and "no catalog" in result.output
    assert not (tmp_path / "data" / "catalog.db").exists()
