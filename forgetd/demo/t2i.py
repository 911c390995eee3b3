"""The text-to-image part of the demo: a rights holder asks that the demo shapes model stop drawing circles.

The request goes through the same code as every other family (submit, approval, `api.tick`: the `spm`
recipe trains a rank-1 adapter, it is verified, composed into a checkpoint, verified again and promoted),
and `api.generate` draws before/after grids from the served checkpoint, both with facilitated transport
(`dynamic`) and with the static merge. The verifier's numbers are the ones the pipeline recorded as
evidence when it verified the candidate.

`python -m forgetd.demo.t2i HOME CACHE_DIR RESULT_JSON [CORES_FILE]` runs this part in a process of its own on
the demo's home (forgetd.demo.prebuild.start_shapes_part), while the demo runs the other parts; once CORES_FILE
appears it takes the thread count written there (forgetd.demo.prebuild.FreeCores), once the model is built."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from forgetd import api

MODEL = "demo-shapes"
CONCEPT = "circle"
PROMPTS = ("a red circle", "a blue disc", "a green square", "a yellow triangle")


def _slug(prompt: str) -> str:
    return "-".join(prompt.split()[1:])


def _evidence(ctx, public_id: str) -> dict[str, Any] | None:
    """The verifier's numbers the pipeline recorded for this request: on the promoted candidate, or on the
    adapter alone when it was refused there."""
    from sqlalchemy import select

    from forgetd.db.models import Evaluation, Request
    from forgetd.pipeline import load_evidence

    with ctx.session() as s:
        request_id = s.execute(select(Request.id).where(Request.public_id == public_id)).scalar_one()
        row = s.execute(select(Evaluation).where(Evaluation.request_id == request_id,
                                                 Evaluation.evidence_uri.is_not(None))
                        .order_by(Evaluation.id.desc()).limit(1)).scalar_one_or_none()
        uri = row.evidence_uri if row else None
    if uri is None:
        return None
    payload = load_evidence(ctx, uri)
    if "metrics" in payload:  # the adapter's evaluation
        return {"metrics": payload["metrics"], "original": payload["original"], "on": "adapter"}
    for result in payload.get("results", []):
        if result["request"] == public_id:
            return {"metrics": result["metrics"], "original": result["original"], "on": "checkpoint"}
    return None


def _build_progress(progress):
    """The shapes builder's events ({phase, step, steps, loss}) in the shape the tick printer reads."""
    if progress is None:
        return None

    def show(event: dict[str, Any]) -> None:
        if "step" in event:
            progress({"stage": f"build ({event['phase']})", "model": MODEL, "step": event["step"],
                      "max_steps": event["steps"], "loss": event["loss"]})

    return show


def run(as_: Callable[[str], "api.Context"], cache_dir: Path, workdir: Path, *, progress=None,
        build_progress=None) -> dict[str, Any]:
    """`build_progress` (default `progress`) sees the model's build, `progress` the request's pipeline."""
    from forgetd.demo import shapes

    alice = as_("alice")
    root = shapes.ensure_shapes_t2i(cache_dir, shapes.ShapesConfig(),
                                    progress=_build_progress(build_progress or progress))
    api.model_register(alice, MODEL, "text_to_image", str(shapes.model_path(root)),
                       dataset=str(shapes.dataset_path(root)))
    grids = workdir / "t2i-grids"
    grids.mkdir(parents=True, exist_ok=True)
    files = {"before": [r["out"] for r in api.generate_many(
        alice, MODEL, [(prompt, grids / f"before-{_slug(prompt)}.png") for prompt in PROMPTS], n=16)]}
    record = api.request_submit(alice, {"model": MODEL, "policy": "copyright-concept",
                                        "subject": "rights-desk@studio.example", "forget": {"concept": CONCEPT}})
    api.request_approve(as_("bob"), record["id"])
    api.tick(alice, model=MODEL, progress=progress)
    shown = api.request_show(alice, record["id"])
    served = [c for c in api.checkpoint_list(alice, MODEL) if "prod" in c["aliases"]][0]
    for mode in ("dynamic", "merged"):
        files[f"after_{mode}"] = [r["out"] for r in api.generate_many(
            alice, MODEL, [(prompt, grids / f"after-{mode}-{_slug(prompt)}.png") for prompt in PROMPTS],
            mode=mode, n=16)]
    return {"request": record["id"], "concept": CONCEPT, "status": shown["status"], "reason": shown["status_reason"],
            "served_version": served["version"], "evidence": _evidence(alice, record["id"]), "grids": str(grids),
            "files": files, "model_metrics": shapes.read_demo_meta(root).get("metrics", {})}


def main(argv: list[str] | None = None) -> int:
    import sys
    import time

    from forgetd.cli.tick import _printer
    from forgetd.demo.cache import write_atomic
    from forgetd.demo.lifecycle import Operators, demo_settings
    from forgetd.demo.prebuild import FreeCores

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (3, 4):
        print("usage: python -m forgetd.demo.t2i HOME CACHE_DIR RESULT_JSON [CORES_FILE]", file=sys.stderr)
        return 2
    home, cache_dir, result_path = Path(args[0]), Path(args[1]), Path(args[2])
    cores = FreeCores(Path(args[3]) if len(args) == 4 else None)
    as_ = Operators(demo_settings(home))
    began = time.perf_counter()
    try:
        # The cores are taken at the pipeline's events, never during the build: a cached entry is a one-thread
        # build (forgetd.demo.cache.finished_build), and one that took the second core half way was neither,
        # recorded two threads, and was built again by every later demo (cached demo on an Intel Xeon: 149 s,
        # 137 of them rebuilding the shapes model)
        printer = _printer(False)
        result = run(as_, cache_dir, home, progress=cores.wrap(printer), build_progress=printer)
    finally:
        as_.close()
    result["seconds"] = round(time.perf_counter() - began, 1)
    write_atomic(result_path, json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
