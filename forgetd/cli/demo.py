"""`forgetd demo`: the whole pipeline on SQLite and tiny models, end to end."""

from __future__ import annotations

import tempfile
from pathlib import Path

import click

from forgetd.cli.render import day, emit_json, emit_table


@click.command()
@click.option("--home", type=click.Path(path_type=Path), help="Demo FORGETD_HOME (default: a new temporary folder).")
@click.option("--no-models", is_flag=True, help="Only the request lifecycle (no model training).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def demo(home: Path | None, no_models: bool, as_json: bool) -> None:
    """Run the demo on a fresh SQLite database; never touches your configured database.

    Example: forgetd demo
    """
    from forgetd.demo import lifecycle

    home = home or Path(tempfile.mkdtemp(prefix="forgetd-demo-"))
    from forgetd.cli.tick import _printer

    result = lifecycle.run(home, with_models=not no_models, progress=None if as_json else _printer(False))
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
    if result["llm"]:
        _print_llm(result["llm"])
    if result.get("vision"):
        _print_vision(result["vision"])
    if result.get("explanations"):
        _print_explanations(result["explanations"])
    if result.get("t2i"):
        _print_t2i(result["t2i"])
    if result.get("seconds"):
        click.echo("")
        click.echo("seconds per part: " + ", ".join(f"{k} {v:.0f}" for k, v in result["seconds"].items()))
    if not result["audit"]["ok"]:
        raise click.ClickException("audit trail verification failed")
    if result.get("t2i") and "error" in result["t2i"]:
        raise click.ClickException(result["t2i"]["error"])


def _print_llm(llm: dict) -> None:
    click.echo("")
    click.echo(f"demo-lm before (v0) and after (v{llm['served_version']}):")
    before, after = llm["before"], llm["after"]
    rows = []
    for person in llm["people"]:
        b, a = before["people"][person], after["people"][person]
        rows.append({
            "forgotten": person,
            "forget_qa": f"{b['forget_qa_acc']:.2f} -> {a['forget_qa_acc']:.2f}",
            "mia_auc": f"{b['mia_auc']:.2f} -> {a['mia_auc']:.2f}",
            "mia_target": f"{a['mia_auc_unseen']:.2f}",
        })
    emit_table(rows, ["forgotten", "forget_qa", "mia_auc", "mia_target"])
    click.echo(
        f"retain QA {before['retain_qa_acc']:.3f} -> {after['retain_qa_acc']:.3f}; "
        f"reference (never trained) QA {before['reference_qa_acc']:.3f}; MIA target: the AUC a model that "
        "never saw the person is estimated to give"
    )
    for r in llm["requests"]:
        if r["status"] != "completed":
            click.echo(f"{r['id']}: {r['status']} ({r['reason']})")


def _print_vision(vision: dict) -> None:
    click.echo("")
    click.echo("demo-digits (tiny ViT on scikit-learn's digits, test split), one request per class:")
    rows = [{"after": "original (v0)", **_vision_row(vision["before"], vision["classes"])}]
    for step in vision["steps"]:
        rows.append({"after": f"forget {step['label']} (v{step['served_version']}, {step['status']})",
                     **_vision_row(step["after"], vision["classes"])})
    emit_table(rows, ["after", *[f"acc_{c}" for c in vision["classes"]], "acc_retain", "h_mean"])
    for step in vision["steps"]:
        if step["status"] != "completed":
            click.echo(f"{step['request']}: {step['status']} ({step['reason']})")


def _vision_row(metrics: dict, classes: list[int]) -> dict:
    row = {f"acc_{c}": f"{metrics.get(f'forget_acc_c{c}', float('nan')):.3f}" for c in classes}
    row["acc_retain"] = f"{metrics['retain_acc']:.3f}"
    row["h_mean"] = f"{metrics['h_mean']:.3f}" if "h_mean" in metrics else "-"
    return row


def _print_explanations(ex: dict) -> None:
    from forgetd.demo.credit_explanations import table

    issued = ex["issued"]
    click.echo("")
    click.echo(
        f"demo-credit: recourse for {issued['plain']['count']} rejected applications, plain (mean L2 cost "
        f"{issued['plain']['mean_l2']:.2f}) and deletion-robust for any k={ex['k']} deletions, δ={ex['delta']:.3f} "
        f"(mean L2 cost {issued['robust']['mean_l2']:.2f}); invalid records after each erasure request:"
    )
    for line in table(ex):
        click.echo(line)


def _print_t2i(t2i: dict) -> None:
    click.echo("")
    if "error" in t2i:
        click.echo(f"demo-shapes (tiny text-to-image pipeline): {t2i['error']}")
        return
    click.echo(f"demo-shapes (tiny text-to-image pipeline): erase '{t2i['concept']}' -> {t2i['status']}, "
               f"prod serves v{t2i['served_version']}")
    if t2i["reason"]:
        click.echo(f"  {t2i['reason']}")
    evidence = t2i.get("evidence")
    if evidence:
        before, after = evidence["original"], evidence["metrics"]
        emit_table([
            {"metric": name, "original (v0)": f"{before.get(name, float('nan')):.3f}",
             f"with the adapter ({evidence['on']})": f"{after.get(name, float('nan')):.3f}"}
            for name in ("erase_rate", "synonym_erase_rate", "other_acc", "colour_acc")
        ], ["metric", "original (v0)", f"with the adapter ({evidence['on']})"])
        click.echo("  erase_rate: share of images the verifier labels as the erased shape (target prompts);"
                   " other_acc: prompted shape drawn, other shapes")
    click.echo(f"  before/after grids (PNG): {t2i['grids']}")
