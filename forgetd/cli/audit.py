"""`forgetd audit …`: verify, read and export the tamper-evident trail."""

from __future__ import annotations

from pathlib import Path

import click

from forgetd.cli.context import api_context
from forgetd.cli.render import emit_json, emit_table


@click.group()
def audit() -> None:
    """Verify, read and export the audit trail.

    Example: forgetd audit verify
    """


@audit.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def verify(ctx, as_json) -> None:
    """Re-hash the whole chain; exit 0 when intact, 1 naming the first bad seq.

    Example: forgetd audit verify
    """
    from forgetd import api
    from forgetd.errors import IntegrityFailure

    result = api.audit_verify(api_context(ctx))
    if as_json:
        emit_json(result)
        if not result["ok"]:
            ctx.exit(1)
        return
    if not result["ok"]:
        raise IntegrityFailure(f"audit trail broken at seq {result['bad_seq']}: {result['problem']}", field="audit")
    click.echo(f"audit trail intact: {result['checked']} events")


@audit.command()
@click.option("--request", "request_id", metavar="ID", help="Only events about this request.")
@click.option("--subject", help="Only events about this subject's requests (matched by keyed hash).")
@click.option("--limit", type=click.IntRange(1), help="At most this many events.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def log(ctx, request_id, subject, limit, as_json) -> None:
    """Show audit events, oldest first.

    Example: forgetd audit log --request rq_abcdefghijklmnop
    """
    from forgetd import api

    rows = api.audit_log(api_context(ctx), request_id=request_id, subject=subject, limit=limit)
    if as_json:
        emit_json(rows)
        return
    emit_table(
        [{**r, "at": r["at"][:19], "resource": f"{r['resource_type']}:{r['resource_id']}", "hash": r["hash"][:12]} for r in rows],
        ["seq", "at", "actor", "action", "resource", "hash"],
    )


@audit.command()
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default="jsonl", show_default=True)
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output file, written whole or not at all (default stdout).")
@click.pass_context
def export(ctx, fmt, out) -> None:
    """Export the whole trail with hashes, for archiving or external verification.

    Example: forgetd audit export --format csv --out trail.csv
    """
    from forgetd import api

    if out is None or str(out) == "-":
        stdout = click.get_text_stream("stdout")  # not click.echo: it strips escape sequences off a pipe
        for line in api.audit_export(api_context(ctx), fmt):
            stdout.write(line)
        return
    result = api.audit_export_file(api_context(ctx), fmt, out)
    click.echo(f"wrote {result['lines']} lines to {result['path']}", err=True)
