"""`forgetd sweep`: retention shredding and deadline alerts (the service runs it on a schedule)."""

from __future__ import annotations

import click

from forgetd.cli.context import api_context
from forgetd.cli.render import emit_json


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def sweep(ctx: click.Context, as_json: bool) -> None:
    """Shred payloads past their policy's retention and record deadline.at_risk / deadline.breached.

    Each effect happens once, so running it often is harmless.

    Example: forgetd sweep --json
    """
    from forgetd import api

    result = api.sweep(api_context(ctx))
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"shredded {len(result['shredded'])}, at risk {len(result['at_risk'])}, breached {len(result['breached'])}"
    )
