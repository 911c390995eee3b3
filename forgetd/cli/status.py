"""`forgetd status`: the queue, running jobs, deadlines at risk, and what each model serves."""

from __future__ import annotations

import click

from forgetd.cli.context import api_context
from forgetd.cli.render import emit_json, emit_table


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def status(ctx, as_json) -> None:
    """Show queue depth by state, running jobs with lease ages, requests at risk or breached, and the
    checkpoint each model serves.

    Example: forgetd status --json
    """
    from forgetd import api

    record = api.status(api_context(ctx))
    if as_json:
        emit_json(record)
        return
    by_state = record["queue"]["by_state"]
    click.echo("queue: " + (", ".join(f"{k} {v}" for k, v in sorted(by_state.items())) or "empty"))
    click.echo("\nrunning jobs:")
    emit_table([{**j, "requests": ",".join(j["requests"]) or None, "lease_age": j["lease_age_seconds"]}
                for j in record["running"]], ["id", "kind", "requests", "attempts", "lease_age", "lease_owner"])
    click.echo(f"\nrequests breached: {len(record['requests_breached'])}, at risk: {len(record['requests_at_risk'])}")
    emit_table(record["requests_breached"] + record["requests_at_risk"], ["id", "status", "due_at"], empty="")
    click.echo("\nserved:")
    emit_table(record["served"], ["model", "version", "content_id"])
