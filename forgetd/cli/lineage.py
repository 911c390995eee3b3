"""`forgetd lineage …`: how a request was honoured; what was served while holding a subject's data."""

from __future__ import annotations

import click

from forgetd.cli.context import api_context
from forgetd.cli.render import emit_json, emit_table


@click.group()
def lineage() -> None:
    """Trace requests and subjects through adapters, checkpoints and aliases.

    Example: forgetd lineage subject jane@example.org
    """


@lineage.command("request")
@click.argument("request_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def request_(ctx, request_id, as_json) -> None:
    """Request → adapter → checkpoint → alias, with when it was honoured and the evidence.

    Example: forgetd lineage request rq_abcdefghijklmnop
    """
    from forgetd import api

    record = api.lineage_request(api_context(ctx), request_id)
    if as_json:
        emit_json(record)
        return
    click.echo(f"{record['request']} ({record['status']}) on {record['model']}; honoured at {record['honoured_at'] or '-'}")
    for adapter in record["adapters"]:
        click.echo(f"  adapter {adapter['sha256'][:12]} recipe {adapter['recipe']} ({adapter['status']})")
    for c in record["checkpoints"]:
        spans = "; ".join(f"{s['alias']} {s['from'][:19]} → {(s['to'] or 'now')[:19]}" for s in c["served"]) or "never served"
        click.echo(f"  checkpoint v{c['version']} ({c['status']}): {spans}")
    if record["evaluations"]:
        emit_table(record["evaluations"], ["target", "metric", "value", "threshold", "passed"])


@lineage.command()
@click.argument("subject")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def subject(ctx, subject, as_json) -> None:
    """Which checkpoints were served while containing SUBJECT's data, from when to when.

    Example: forgetd lineage subject jane@example.org
    """
    from forgetd import api

    record = api.lineage_subject(api_context(ctx), subject)
    if as_json:
        emit_json(record)
        return
    if not record["models"]:
        click.echo("no data-erasure requests for this subject")
    for model in record["models"]:
        click.echo(f"{model['model']}: subject data served until {model['data_served_until'] or '-'}")
        emit_table(
            [{**s, "from": s["from"][:19], "to": (s["to"] or "now")[:19]} for s in model["served"]],
            ["alias", "version", "from", "to", "contains_subject_data"],
        )
