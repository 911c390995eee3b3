"""`forgetd tick`: run the pipeline once, in-process, until nothing moves."""

from __future__ import annotations

import click

from forgetd.cli.context import api_context
from forgetd.cli.render import emit_json


def _printer(verbose: bool):
    last = {}

    def show(event: dict) -> None:
        stage = event.get("stage") or "build"
        what = event.get("request") or event.get("model") or "demo model"
        if "step" in event:
            if not verbose and event["step"] % 10 and event["step"] != event.get("max_steps"):
                return
            bar_width = 20
            done = int(bar_width * event["step"] / max(1, event["max_steps"]))
            click.echo(
                f"  [{stage} {what}] [{'#' * done}{'.' * (bar_width - done)}] step {event['step']}/{event['max_steps']}"
                f" loss {event['loss']:.3f}"
                + (f" forget_qa {event['forget_qa_acc']:.2f} mia {event['mia_auc']:.2f}" if "forget_qa_acc" in event and "mia_auc" in event else "")
                + (f" forget_acc {event['forget_acc']:.2f} mia {event['mia_auc']:.2f}"
                   if "forget_acc" in event and "mia_auc" in event else "")
                + (f" trained_qa {event['trained_qa']:.2f}" if "trained_qa" in event else ""),
                err=True,
            )
        elif (stage, what) != last.get("key"):
            click.echo(f"{stage} {what}", err=True)
        last["key"] = (stage, what)

    return show


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--verbose", is_flag=True, help="Report every evaluation step of training.")
@click.option("--model", "model", default=None, metavar="NAME",
              help="Only this model's jobs (other models' requests wait for another tick or the service).")
@click.pass_context
def tick(ctx, as_json, verbose, model) -> None:
    """Run the pipeline synchronously: approved → train → evaluate → compose → verify → promote →
    completed, with progress on stderr.

    Example: forgetd tick --model demo-lm
    """
    from forgetd import api

    report = api.tick(api_context(ctx), model=model, progress=_printer(verbose))
    if as_json:
        emit_json(report)
        return
    click.echo(
        f"scheduled {len(report['scheduled'])}, trained {len(report['trained'])}, "
        f"candidates {', '.join(report['candidates']) or '-'}, completed {len(report['completed'])}, "
        f"failed {len(report['failed'])}"
    )
