"""`forgetd job …`: the durable job queue the service and `tick` run."""

from __future__ import annotations

import click

from forgetd.cli.context import api_context
from forgetd.cli.render import emit_json, emit_record, emit_table

STATUSES = ("queued", "running", "succeeded", "failed", "dead", "canceled")
KINDS = ("train", "evaluate", "compose", "promote", "revalidate", "selftest")


def _row(job: dict) -> dict:
    return {**job, "requests": ",".join(job["requests"]) or None,
            "attempts": f"{job['attempts']}/{job['max_attempts']}",
            "lease_age": f"{job['lease_age_seconds']}s" if job["lease_age_seconds"] is not None else None,
            "error": (job["last_error"] or "")[:60] or None}


@click.group()
def job() -> None:
    """Inspect, retry and cancel pipeline jobs.

    Example: forgetd job list --status running
    """


@job.command("list")
@click.option("--status", type=click.Choice(STATUSES), help="Only jobs in this state.")
@click.option("--kind", type=click.Choice(KINDS), help="Only jobs of this kind.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Newest first, at most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def list_(ctx, status, kind, limit, as_json) -> None:
    """List jobs, newest first.

    Example: forgetd job list --status dead --json
    """
    from forgetd import api

    rows = api.job_list(api_context(ctx), status=status, kind=kind, limit=limit)
    if as_json:
        emit_json(rows)
        return
    emit_table([_row(r) for r in rows], ["id", "kind", "status", "requests", "attempts", "lease_age", "executor", "error"])


@job.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def show(ctx, job_id, as_json) -> None:
    """Show one job and its event history (claims, retries, lease losses).

    Example: forgetd job show 12
    """
    from forgetd import api

    record = api.job_show(api_context(ctx), job_id)
    if as_json:
        emit_json(record)
        return
    emit_record({k: v for k, v in record.items() if k != "events"})
    click.echo("")
    emit_table([{**e, "at": e["at"][:23]} for e in record["events"]], ["at", "event", "attempt", "worker", "detail"])


@job.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def retry(ctx, job_id, as_json) -> None:
    """Queue a dead, failed or canceled job again with a fresh attempt budget.

    Example: forgetd job retry 12
    """
    from forgetd import api

    record = api.job_retry(api_context(ctx), job_id)
    if as_json:
        emit_json(record)
        return
    click.echo(f"job {record['id']} queued again (attempt budget {record['max_attempts']})")


@job.command()
@click.argument("job_id", type=int)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def cancel(ctx, job_id, as_json) -> None:
    """Cancel a queued or running job; a running one can publish nothing more. Requests it held are
    failed, to be retried from their step with `forgetd request retry`.

    Example: forgetd job cancel 12
    """
    from forgetd import api

    record = api.job_cancel(api_context(ctx), job_id)
    if as_json:
        emit_json(record)
        return
    failed = ", ".join(record["failed_requests"]) or "none"
    click.echo(f"job {record['id']} canceled; requests failed: {failed}")


@job.command()
@click.option("--count", type=int, default=10, show_default=True, help="How many selftest jobs to queue.")
@click.option("--seconds", type=float, default=0.1, show_default=True, help="How long each holds its lease.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def selftest(ctx, count, seconds, as_json) -> None:
    """Queue short jobs that check the worker fleet end to end (claim, lease, publish).

    Example: forgetd job selftest --count 200 --seconds 0.05
    """
    from forgetd import api

    record = api.job_selftest(api_context(ctx), count=count, seconds=seconds)
    if as_json:
        emit_json(record)
        return
    click.echo(f"queued {len(record['jobs'])} selftest jobs ({record['jobs'][0]}…{record['jobs'][-1]})")
