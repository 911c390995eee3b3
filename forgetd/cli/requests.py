"""`forgetd request …`: take erasure requests in and move them through review."""

from __future__ import annotations

from pathlib import Path

import click

from forgetd.cli.context import api_context
from forgetd.cli.render import day, emit_json, emit_record, emit_table
from forgetd.enums import KIND_VALUES

LIST_COLUMNS = ["id", "model", "policy", "kind", "status", "received", "due", "deadline"]


def _row(record: dict) -> dict:
    return {**record, "received": day(record["received_at"]), "due": day(record["effective_due_at"])}


def _show(record: dict, as_json: bool) -> None:
    if as_json:
        emit_json(record)
        return
    emit_record({k: v for k, v in record.items() if k not in ("transitions", "payload")})
    if record.get("transitions"):
        click.echo("")
        emit_table(
            [{**t, "at": t["at"][:19]} for t in record["transitions"]],
            ["at", "from", "to", "reason_code", "actor"],
        )
    if "payload" in record:
        click.echo("")
        click.echo("payload (personal data; do not paste into tickets):")
        emit_json(record["payload"])


@click.group()
def request() -> None:
    """Submit, import, review and close erasure requests.

    Example: forgetd request submit --model demo-lm --policy gdpr-erasure --subject alice@example.com
    """


@request.command()
@click.option("--model", required=True, help="Registered model name.")
@click.option("--policy", required=True, help="Policy name (see `forgetd policy list`).")
@click.option("--subject", required=True, help="The data subject's identity; stored only as a keyed hash.")
@click.option("--kind", type=click.Choice(KIND_VALUES), help="Request kind (default: the policy's).")
@click.option("--forget-file", type=click.Path(path_type=Path), help="JSON forget specification, what the model's family forgets: texts and/or corpus_ids (causal "
                   "LMs), corpus_ids (tabular), labels and/or corpus_ids (image classifiers), concept (text-to-image).")
@click.option("--idempotency-key", help="Submitting again with the same key returns the same request.")
@click.option("--received-at", help="When the demand was received (ISO 8601 with timezone; default now).")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.pass_context
def submit(ctx, model, policy, subject, kind, forget_file, idempotency_key, received_at, as_json) -> None:
    """Submit one request and print its id.

    Example: forgetd request submit --model demo-lm --policy gdpr-erasure --subject alice@example.com
    --forget-file alice.json --idempotency-key ticket-4711
    """
    from forgetd import api
    from forgetd.intake import read_forget_file

    context = api_context(ctx)
    raw = {"model": model, "policy": policy, "subject": subject, "kind": kind,
           "idempotency_key": idempotency_key, "received_at": received_at}
    if forget_file is not None:
        raw["forget"] = read_forget_file(forget_file, max_payload_bytes=context.settings.max_payload_bytes)
    record = api.request_submit(context, raw)
    if as_json:
        emit_json(record)
    else:
        click.echo(record["id"])


@request.command("import")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.pass_context
def import_(ctx, file: Path, as_json: bool) -> None:
    """Import requests from JSON lines; any invalid line rejects the whole file.

    Each line: {"model": …, "policy": …, "subject": …, "forget": {…}, "idempotency_key": …, "received_at": …}

    Example: forgetd request import tickets.jsonl
    """
    from forgetd import api

    result = api.request_import(api_context(ctx), file)
    if as_json:
        emit_json(result)
        return
    for row in result["requests"]:
        click.echo(f"line {row['line']}: {row['id']} {row['status']}{'' if row['created'] else ' (existing)'}")
    click.echo(f"imported {result['imported']} request(s)")


@request.command("list")
@click.option("--status", help="Only requests in this state.")
@click.option("--overdue", is_flag=True, help="Only open requests past their (extended) due date.")
@click.option("--due-within", metavar="DURATION", help="Only open requests due within e.g. 7d, 12h, P2W.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def list_(ctx, status, overdue, due_within, as_json) -> None:
    """List requests, oldest first.

    Example: forgetd request list --due-within 7d
    """
    from forgetd import api

    rows = api.request_list(api_context(ctx), status=status, overdue=overdue, due_within=due_within)
    if as_json:
        emit_json(rows)
        return
    emit_table([_row(r) for r in rows], LIST_COLUMNS)


@request.command()
@click.argument("request_id", metavar="ID")
@click.option("--payload", "include_payload", is_flag=True, help="Decrypt and print the forget specification.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def show(ctx, request_id, include_payload, as_json) -> None:
    """Show one request with its history.

    Example: forgetd request show rq_abcdefghijklmnop --json
    """
    from forgetd import api

    _show(api.request_show(api_context(ctx), request_id, include_payload=include_payload), as_json)


def _simple(name: str, doc: str, fn_name: str):
    @click.argument("request_id", metavar="ID")
    @click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
    @click.pass_context
    def command(ctx, request_id, as_json):
        from forgetd import api

        record = getattr(api, fn_name)(api_context(ctx), request_id)
        _report(record, as_json)

    command.__doc__ = doc
    return request.command(name)(command)


def _report(record: dict, as_json: bool) -> None:
    if as_json:
        emit_json(record)
    else:
        click.echo(f"{record['id']}: {record['status']} (due {day(record['effective_due_at'])})")


_simple(
    "verify-identity",
    "Record that the subject's identity was verified; the paused clock resumes.\n\n"
    "Example: forgetd request verify-identity rq_abcdefghijklmnop",
    "request_verify_identity",
)
_simple(
    "approve",
    "Approve a request under review (four-eyes policies: not by its submitter).\n\n"
    "Example: forgetd --operator bob request approve rq_abcdefghijklmnop",
    "request_approve",
)
_simple(
    "release",
    "Release a held request back to the state it was held in.\n\nExample: forgetd request release rq_abcdefghijklmnop",
    "request_release",
)


@request.command()
@click.argument("request_id", metavar="ID")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.pass_context
def shred(ctx, request_id, as_json) -> None:
    """Destroy a closed request's data key: its payload can never be decrypted again.

    Example: forgetd request shred rq_abcdefghijklmnop
    """
    from forgetd import api

    record = api.request_shred(api_context(ctx), request_id)
    if as_json:
        emit_json(record)
    elif record["already_shredded"]:
        click.echo(f"{record['id']}: already shredded at {record['shredded_at']}")
    else:
        click.echo(f"{record['id']}: payload shredded")


def _with_reason(name: str, doc: str, fn_name: str, *, pause: bool = False):
    @click.argument("request_id", metavar="ID")
    @click.option("--reason", required=True, help="Why (kept with the request; avoid personal data).")
    @click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
    @click.pass_context
    def command(ctx, request_id, reason, as_json, **extra):
        from forgetd import api

        record = getattr(api, fn_name)(api_context(ctx), request_id, reason, **extra)
        _report(record, as_json)

    command.__doc__ = doc
    if pause:
        command = click.option(
            "--pause-clock", is_flag=True, help="Stop the deadline clock while held (waiting on the subject)."
        )(command)
    return request.command(name)(command)


_with_reason("deny", "Deny a request.\n\nExample: forgetd request deny rq_abcdefghijklmnop --reason 'not our data'", "request_deny")
_with_reason(
    "hold",
    "Put a request on hold; `release` returns it to where it was.\n\n"
    "Example: forgetd request hold rq_abcdefghijklmnop --reason 'clarification asked' --pause-clock",
    "request_hold",
    pause=True,
)
_with_reason(
    "cancel", "Cancel a request.\n\nExample: forgetd request cancel rq_abcdefghijklmnop --reason 'withdrawn'", "request_cancel"
)


@request.command()
@click.argument("request_id", metavar="ID")
@click.option("--from", "step", type=click.Choice(["train", "evaluate", "compose"]),
              help="Step to resume at (default: the one that failed).")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.pass_context
def retry(ctx, request_id, step, as_json) -> None:
    """Put a failed request back into the pipeline; the next tick or the service picks it up.

    From `train` after an adapter of the request was refused, the new adapter is trained with the recipe's
    seed plus the number of adapters already trained for it (the same seed would rebuild the refused one).

    Example: forgetd request retry rq_abcdefghijklmnop --from train
    """
    from forgetd import api

    _report(api.request_retry(api_context(ctx), request_id, step), as_json)


@request.command()
@click.argument("request_id", metavar="ID")
@click.option("--months", required=True, type=click.IntRange(1, 2), help="Extension in months (at most 2, once).")
@click.option("--reason", required=True, help="Why the extension is needed.")
@click.option("--notified-at", help="When the subject was told of the extension (ISO 8601).")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@click.pass_context
def extend(ctx, request_id, months, reason, notified_at, as_json) -> None:
    """Extend the deadline once, before the original due date, after notifying the subject.

    Example: forgetd request extend rq_abcdefghijklmnop --months 2 --reason 'complex' --notified-at 2026-11-20
    """
    from forgetd import api

    record = api.request_extend(api_context(ctx), request_id, months=months, reason=reason, notified_at=notified_at)
    _report(record, as_json)
