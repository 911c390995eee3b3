"""`forgetd model …`: the models forgetd serves and forgets from."""

from __future__ import annotations

import click

from forgetd.cli.context import api_context
from forgetd.cli.render import emit_json, emit_record, emit_table
from forgetd.enums import FAMILY_VALUES


@click.group()
def model() -> None:
    """Register and list models.

    Example: forgetd model register demo-lm --family causal_lm --path ./models/demo-lm
    """


@model.command()
@click.argument("name")
@click.option("--family", required=True, type=click.Choice(FAMILY_VALUES), help="Model family.")
@click.option("--path", "path", required=True, help="Local model directory (Hugging Face / diffusers layout).")
@click.option("--dataset", help="JSON dataset: records, retain and reference sets (see forgetd/datasets.py).")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.pass_context
def register(ctx: click.Context, name: str, family: str, path: str, dataset: str | None, as_json: bool) -> None:
    """Register model NAME; its weight files are hashed and checked on every later load.

    For a causal_lm with a --dataset, the model scores the dataset's reference texts once here, to split
    them into matched calibration and verification halves (unless the dataset gives reference_split).

    Example: forgetd model register demo-lm --family causal_lm --path ./models/demo-lm --dataset people.json
    """
    from forgetd import api

    record = api.model_register(api_context(ctx), name, family, path, dataset=dataset)
    if as_json:
        emit_json(record)
    else:
        click.echo(f"registered {record['name']} ({record['family']}) sha256 {record['base_sha256'][:16]}…")


@model.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List registered models.

    Example: forgetd model list --json
    """
    from forgetd import api

    rows = api.model_list(api_context(ctx))
    if as_json:
        emit_json(rows)
        return
    emit_table(rows, ["name", "family", "weight_files", "base_sha256", "registered_at"])


@model.command()
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def show(ctx: click.Context, name: str, as_json: bool) -> None:
    """Show one model.

    Example: forgetd model show demo-lm
    """
    from forgetd import api
    from forgetd.errors import NotFoundError

    rows = [m for m in api.model_list(api_context(ctx)) if m["name"] == name]
    if not rows:
        raise NotFoundError("unknown model; see `forgetd model list`", field="NAME")
    if as_json:
        emit_json(rows[0])
    else:
        emit_record(rows[0])
