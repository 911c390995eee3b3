"""`forgetd policy …`: the request policies in policies/*.yaml."""

from __future__ import annotations

from pathlib import Path

import click

from forgetd.cli.context import api_context
from forgetd.cli.render import emit_json, emit_record, emit_table


@click.group()
def policy() -> None:
    """List and validate request policies.

    Example: forgetd policy validate policies/gdpr-erasure.yaml
    """


@policy.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List the policies forgetd applies.

    Example: forgetd policy list
    """
    from forgetd import api

    rows = api.policy_list(api_context(ctx, check_schema=False))
    if as_json:
        emit_json(rows)
        return
    emit_table(rows, ["name", "kind", "identity_required", "approval_required", "four_eyes", "extension_max", "recipes"])


@policy.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def validate(ctx: click.Context, file: Path, as_json: bool) -> None:
    """Validate one policy FILE, and that every adapter recipe it names loads from the configured
    adapters directory (FORGETD_ADAPTERS_DIR); errors name the file and the field.

    Example: forgetd policy validate policies/gdpr-erasure.yaml
    """
    from forgetd import api

    result = api.policy_validate(file, api_context(ctx, check_schema=False).settings.adapters_dir)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"{file}: valid policy {result['name']} ({result['kind']} requests)")
