"""The per-invocation context object handed to commands."""

from __future__ import annotations

import click


def api_context(ctx: click.Context, *, check_schema: bool = True):
    """Settings are read once per invocation; the database opens on first use."""
    from forgetd import api
    from forgetd.config import load_settings

    root = ctx.find_root()
    operator = root.params.get("operator")
    settings = load_settings().with_operator(operator)
    context = api.open_context(settings, check_schema=check_schema)
    ctx.call_on_close(context.close)
    return context


pass_obj = click.pass_context
