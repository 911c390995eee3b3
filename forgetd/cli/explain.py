"""`forgetd explain …`: explanation records issued to people, and how they hold up as the model changes."""

from __future__ import annotations

from pathlib import Path

import click

from forgetd.cli.context import api_context
from forgetd.cli.render import day, emit_json, emit_record, emit_table

LIST_COLUMNS = ["id", "model", "kind", "robust_k", "status", "issued_under", "last_checked_on", "reissued_as", "issued"]
STATUSES = ("VALID", "AT_RISK", "INVALIDATED", "REISSUED", "ERASED")


def _row(record: dict) -> dict:
    return {**record, "issued": day(record["created_at"])}


@click.group()
def explain() -> None:
    """Issue explanations to people and track whether they still hold after each model update.

    VALID: still true on the served checkpoint; AT_RISK: still true, but with less margin than promised
    (one more update may break it); INVALIDATED: no longer true (reissue it); REISSUED: replaced by a new
    record; ERASED: its subject's data was erased.

    Example: forgetd explain issue --model credit --subject alice@example.com --input alice.json
    """


@explain.command()
@click.option("--model", required=True, help="Registered tabular_classifier model name.")
@click.option("--subject", required=True, help="The person's identity; stored only as a keyed hash.")
@click.option("--input", "input_file", required=True, type=click.Path(path_type=Path),
              help="JSON object of the person's feature values ({feature: number}).")
@click.option("--kind", type=click.Choice(("counterfactual", "attribution")), default="counterfactual",
              show_default=True, help="Recourse (what to change) or feature attribution (why).")
@click.option("--robust-k", type=int, help="Deletion-robust recourse: stay valid if any K training rows are deleted.")
@click.option("--delta", type=float, help="Margin (logits) the robust recourse keeps under those deletions.")
@click.option("--json", "as_json", is_flag=True, help="Print the record summary as JSON.")
@click.pass_context
def issue(ctx, model, subject, input_file, kind, robust_k, delta, as_json) -> None:
    """Issue an explanation under the served checkpoint and print its id (the record is stored encrypted).

    Example: forgetd explain issue --model credit --subject alice@example.com --input alice.json
    --robust-k 10 --delta 0.2
    """
    from forgetd import api

    record = api.explain_issue(api_context(ctx), model, subject, input_file, kind, robust_k=robust_k, delta=delta)
    if as_json:
        emit_json(record)
    else:
        click.echo(record["id"])


@explain.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only records in this state.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def list_(ctx, status, as_json) -> None:
    """List explanation records, oldest first.

    Example: forgetd explain list --status INVALIDATED
    """
    from forgetd import api

    rows = api.explain_list(api_context(ctx), status=status)
    if as_json:
        emit_json(rows)
        return
    emit_table([_row(r) for r in rows], LIST_COLUMNS)


@explain.command()
@click.argument("explanation_id", metavar="ID")
@click.option("--record", "include_record", is_flag=True, help="Decrypt and print the record (personal data).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def show(ctx, explanation_id, include_record, as_json) -> None:
    """Show one record: settings, robustness, and every re-check since it was issued.

    Example: forgetd explain show ex_abcdefghijklmnop --record
    """
    from forgetd import api

    record = api.explain_show(api_context(ctx), explanation_id, include_record=include_record)
    if as_json:
        emit_json(record)
        return
    emit_record({k: v for k, v in record.items() if k not in ("checks", "record", "noise_floor", "settings")})
    if record["checks"]:
        click.echo("")
        emit_table([{**c, "at": c["at"][:19]} for c in record["checks"]],
                   ["at", "version", "status", "margin", "spearman", "topk", "decision_changed"])
    if "record" in record:
        click.echo("")
        click.echo("record (personal data; do not paste into tickets):")
        emit_json(record["record"])


@explain.command()
@click.option("--model", required=True, help="Registered model name.")
@click.option("--checkpoint", required=True, type=int, help="Checkpoint version the alias moved to.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def report(ctx, model, checkpoint, as_json) -> None:
    """Invalidation rate of the move to a checkpoint: how the live records fared when re-checked on it.

    Example: forgetd explain report --model credit --checkpoint 1
    """
    from forgetd import api

    result = api.explain_report(api_context(ctx), model, checkpoint)
    if as_json:
        emit_json(result)
        return
    rate = result["invalidation_rate"]
    emit_record({
        "model": result["model"],
        "transition": f"v{result['from_version']} -> v{result['version']}" if result["from_version"] is not None
        else f"v{result['version']}",
        "checked": result["checked"],
        "valid": result["counts"]["VALID"],
        "at_risk": result["counts"]["AT_RISK"],
        "invalidated": result["counts"]["INVALIDATED"],
        "invalidation_rate": f"{rate:.1%}" if rate is not None else None,
    })


@explain.command()
@click.argument("explanation_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the new record's summary as JSON.")
@click.pass_context
def reissue(ctx, explanation_id, as_json) -> None:
    """Issue the explanation again under the served checkpoint; the old record points at the new one.

    Example: forgetd explain reissue ex_abcdefghijklmnop
    """
    from forgetd import api

    record = api.explain_reissue(api_context(ctx), explanation_id)
    if as_json:
        emit_json(record)
    else:
        click.echo(record["id"])
