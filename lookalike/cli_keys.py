"""`lookalike keys ...`: the API keys clients and the web page sign in with (create, list, revoke)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING

import click

from lookalike.context import CliContext, human

if TYPE_CHECKING:
    from indexer.settings import Settings
    from storage.api_keys import ApiKeys

SCOPE_HELP = ("read: search, browse and fetch images; write: also change labels (and add and remove images); "
              "admin: also /metrics.")


@contextmanager
def _keys(obj: CliContext, create: bool) -> Iterator[ApiKeys]:
    from storage.api_keys import ApiKeys, KeyProblem
    from storage.catalog import Catalog

    catalog = Catalog(obj.settings.storage.resolved_database_url(), create=create)
    try:
        yield ApiKeys(catalog)
    except KeyProblem as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        catalog.close()


@click.group()
def keys() -> None:
    """API keys for the HTTP API and the web page (only their hashes are stored).

    \b
    Examples:
      lookalike keys create phone --scope read
      lookalike keys list
      lookalike keys revoke phone
    """


@keys.command("create")
@click.argument("name")
@click.option("--scope", type=click.Choice(["read", "write", "admin"]), default="read", show_default=True,
              help=SCOPE_HELP)
@click.pass_obj
def create_key(obj: CliContext, name: str, scope: str) -> None:
    """Create key NAME and print it once: store it now, it cannot be shown again.

    \b
    Example:
      lookalike keys create laptop --scope write > laptop.key
    """
    with _keys(obj, create=True) as book:
        secret = book.create(name, scope)
    click.echo(secret)
    click.echo(f"key {name!r} (scope {scope}) created: it is shown only this once. Send it as "
               "`Authorization: Bearer KEY` or `X-API-Key: KEY`.", err=True)


def _when(moment: datetime | None) -> str | None:
    return None if moment is None else moment.replace(microsecond=0).isoformat()


@keys.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print the keys as a JSON array.")
@click.pass_obj
def list_keys(obj: CliContext, as_json: bool) -> None:
    """List the keys: name, scope, when created and last used (never the keys themselves)."""
    with _keys(obj, create=False) as book:
        listed = book.listed()
    rows = [{"name": k.name, "scope": k.scope, "created": _when(k.created_at), "last_used": _when(k.last_used_at)}
            for k in listed]
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo("no keys yet: `lookalike keys create NAME --scope read` makes one")
        return
    for row in rows:
        click.echo(f"{human(row['name']):<24} {row['scope']:<6} created {row['created']}  "
                   f"last used {row['last_used'] or 'never'}")


@keys.command("revoke")
@click.argument("name")
@click.pass_obj
def revoke_key(obj: CliContext, name: str) -> None:
    """Revoke key NAME: every server refuses it (and its page sessions) within 2 seconds."""
    with _keys(obj, create=False) as book:
        book.revoke(name)
    click.echo(f"key {name!r} revoked")


def check_keys_for_serving(settings: Settings, host: str) -> Settings:
    """The settings a server on `host` runs with; refuse to serve beyond loopback with no key to check.

    With api.auth: auto, a server reachable from other machines needs at least one key, or a deliberate
    api.auth: none. With api.auth: keys and no key yet, it starts and refuses every request until
    `lookalike keys create` makes one (servers see new keys within seconds).
    """
    from storage.api_keys import ApiKeys
    from storage.catalog import Catalog
    from storage.errors import CatalogMissingError

    settings = settings.model_copy(update={"api": settings.api.model_copy(update={"host": host})})
    if not settings.api.keys_required():
        return settings
    try:
        catalog = Catalog(settings.storage.resolved_database_url(), create=False)
    except CatalogMissingError:
        count = 0
    else:
        try:
            count = ApiKeys(catalog).count()
        finally:
            catalog.close()
    if count:
        return settings
    if settings.api.auth == "auto":
        raise click.ClickException(
            f"serving on {host}, which other machines can reach, needs an API key (api.auth: auto) and none "
            "exists: create one with `lookalike keys create NAME --scope read` (it prints the key once), or set "
            "api.auth: none (LOOKALIKE_API__AUTH=none) to serve without keys deliberately; docs/deployment.md "
            "says more")
    click.echo("warning: api.auth is keys but no key exists yet: every request but /healthz and /readyz is "
               "refused until `lookalike keys create NAME` makes one", err=True)
    return settings
