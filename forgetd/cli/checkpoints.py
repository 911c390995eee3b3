"""`forgetd checkpoint …`: composed checkpoints and the serving alias."""

from __future__ import annotations

import click

from forgetd.cli.context import api_context
from forgetd.cli.render import emit_json, emit_record, emit_table


def _short(record: dict) -> dict:
    return {
        **record,
        "aliases": ",".join(record["aliases"]) or None,
        "adapters": len(record["adapters"]),
        "covers": len(record["covers"]),
        "content_id": record["content_id"][:12],
        "created": record["created_at"][:19],
    }


@click.group()
def checkpoint() -> None:
    """List, inspect, promote and roll back served checkpoints.

    Example: forgetd checkpoint list --model demo-lm
    """


@checkpoint.command("list")
@click.option("--model", required=True, help="Registered model name.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def list_(ctx, model, as_json) -> None:
    """List a model's checkpoints (version 0 is the pristine base).

    Example: forgetd checkpoint list --model demo-lm
    """
    from forgetd import api

    rows = api.checkpoint_list(api_context(ctx), model)
    if as_json:
        emit_json(rows)
        return
    emit_table([_short(r) for r in rows], ["version", "status", "aliases", "adapters", "covers", "content_id", "created"])


@checkpoint.command()
@click.option("--model", required=True, help="Registered model name.")
@click.argument("version", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def show(ctx, model, version, as_json) -> None:
    """Show one checkpoint: manifest, covered requests, verification results.

    Example: forgetd checkpoint show --model demo-lm 2
    """
    from forgetd import api

    record = api.checkpoint_show(api_context(ctx), model, version)
    if as_json:
        emit_json(record)
        return
    emit_record({k: v for k, v in record.items() if k not in ("manifest", "evaluations")})
    if record["evaluations"]:
        click.echo("")
        emit_table(record["evaluations"], ["metric", "value", "threshold", "passed", "request_id"])


@checkpoint.command()
@click.option("--model", required=True, help="Registered model name.")
@click.argument("version", type=int)
@click.option("--alias", default="prod", show_default=True, help="Alias to move.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def promote(ctx, model, version, alias, as_json) -> None:
    """Serve checkpoint VERSION under the alias (refused if it lacks a completed request).

    Example: forgetd checkpoint promote --model demo-lm 3
    """
    from forgetd import api

    record = api.checkpoint_promote(api_context(ctx), model, version, alias=alias)
    if as_json:
        emit_json(record)
    else:
        click.echo(f"{model}:{alias} -> v{record['version']}")


@checkpoint.command()
@click.option("--model", required=True, help="Registered model name.")
@click.argument("version", type=int, required=False)
@click.option("--alias", default="prod", show_default=True, help="Alias to move.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def rollback(ctx, model, version, alias, as_json) -> None:
    """Serve an earlier checkpoint (default: the previous one). Refused when it lacks a completed
    request: a rollback never resurrects forgotten data.

    Example: forgetd checkpoint rollback --model demo-lm
    """
    from forgetd import api

    record = api.checkpoint_rollback(api_context(ctx), model, version, alias=alias)
    if as_json:
        emit_json(record)
    else:
        click.echo(f"{model}:{alias} -> v{record['version']}")
