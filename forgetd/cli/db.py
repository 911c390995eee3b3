"""`forgetd init` and `forgetd db …`: the schema."""

from __future__ import annotations

import click

from forgetd.cli.context import api_context
from forgetd.cli.render import emit_json, emit_record


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def init(ctx: click.Context, as_json: bool) -> None:
    """Create FORGETD_HOME, a master key (mode 0600) and the database schema.

    Safe to run again: an existing key is never overwritten.

    Example: FORGETD_HOME=/srv/forgetd forgetd init
    """
    from forgetd import api

    result = api.init(api_context(ctx, check_schema=False))
    if as_json:
        emit_json(result)
        return
    emit_record(result)


@click.group()
def db() -> None:
    """Database schema: upgrade, current revision, drift check.

    Example: forgetd db upgrade
    """


@db.command()
@click.option("--revision", default="head", show_default=True, help="Target revision.")
@click.pass_context
def upgrade(ctx: click.Context, revision: str) -> None:
    """Apply migrations up to REVISION.

    Example: forgetd db upgrade
    """
    from forgetd import api

    result = api.db_upgrade(api_context(ctx, check_schema=False), revision)
    click.echo(f"schema: {result['from'] or 'empty'} -> {result['to']}")


@db.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def current(ctx: click.Context, as_json: bool) -> None:
    """Show the database's schema revision and the head this forgetd expects.

    Example: forgetd db current --json
    """
    from forgetd import api

    result = api.db_current(api_context(ctx, check_schema=False))
    if as_json:
        emit_json(result)
    else:
        emit_record(result)
    if not result["up_to_date"]:
        ctx.exit(1)


@db.command()
@click.pass_context
def check(ctx: click.Context) -> None:
    """Exit 0 when the schema is at head and matches the models (no drift).

    Example: forgetd db check || forgetd db upgrade
    """
    from forgetd import api

    result = api.db_check(api_context(ctx, check_schema=False))
    click.echo(f"schema {result['current']} is up to date; no drift")
