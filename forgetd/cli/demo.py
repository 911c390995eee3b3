"""`forgetd demo`: the whole pipeline on SQLite and tiny models, end to end."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from forgetd.cli.render import day, emit_json, emit_table


@click.command()
@click.option("--home", type=click.Path(path_type=Path), help="Demo FORGETD_HOME (default: a new temporary folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def demo(home: Path | None, as_json: bool) -> None:
    """Run the demo on a fresh SQLite database; never touches your configured database.

    Example: forgetd demo
    """
    from forgetd.demo import lifecycle

    home = home or Path(tempfile.mkdtemp(prefix="forgetd-demo-"))
    result = lifecycle.run(home)
    if as_json:
        emit_json(result)
        return
    click.echo(f"demo home: {result['home']}")
    for step in result["steps"]:
        click.echo(f"- {step}")
    click.echo("")
    emit_table(
        [{**r, "due": day(r["effective_due_at"]), "shredded": bool(r["shredded_at"])} for r in result["requests"]],
        ["id", "policy", "kind", "status", "due", "duplicate_of", "shredded"],
    )
    if not result["audit"]["ok"]:
        raise click.ClickException("audit trail verification failed")
