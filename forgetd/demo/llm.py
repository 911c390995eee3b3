"""The causal-LM part of the demo: the tiny people model, three erasure requests, one tick, and a
before/after table of what the served model still knows."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from forgetd import api


def _measure(ctx, model: str, version: int, people: list[str], *, requested: list[str] | None = None) -> dict[str, Any]:
    """Forget-set metrics per person and retain accuracy, on one checkpoint of the demo model. `requested`
    (default `people`): everyone with a request, whom the estimate of an unseen person's MIA AUC counts
    without, as the pipeline leaves out every request's records."""
    from sqlalchemy import select

    from forgetd import pipeline
    from forgetd.db.models import Checkpoint, Model
    from forgetd.families import causal_lm
    from forgetd.verify.causal_lm import mia_auc, qa_accuracy

    with ctx.session() as s:
        m = s.execute(select(Model).where(Model.name == model)).scalar_one()
        checkpoint = s.execute(
            select(Checkpoint).where(Checkpoint.model_id == m.id, Checkpoint.version == version)
        ).scalar_one()
        weights = pipeline.checkpoint_dir(ctx, checkpoint)
        dataset = pipeline._dataset(ctx, m)
    lm, tokenizer = causal_lm.load_model(weights), causal_lm.load_tokenizer(weights)
    requested = set(requested or people)
    data = causal_lm.forget_data(dataset, [{"corpus_ids": people}], exclude_from_retain=requested).verification_half()
    per_person = {}
    for person in people:
        one = causal_lm.forget_data(dataset, [{"corpus_ids": [person]}], exclude_from_retain=requested).verification_half()
        per_person[person] = {
            "forget_qa_acc": qa_accuracy(lm, tokenizer, one.forget_qa),
            "mia_auc": mia_auc(lm, tokenizer, one.forget_texts, one.reference_texts),
            "mia_auc_unseen": one.unseen_mia_auc(tokenizer),
        }
    return {
        "people": per_person,
        "retain_qa_acc": qa_accuracy(lm, tokenizer, data.retain_qa),
        "reference_qa_acc": qa_accuracy(lm, tokenizer, data.reference_qa),
    }


def _recorded(ctx, model: str, version: int, requests: dict[str, str]) -> dict[str, Any] | None:
    """The verifier's numbers the pipeline recorded when it verified the served checkpoint: per request, the
    checkpoint's metrics and the original's (v0) on that request's verification half. None when the served
    checkpoint was never verified (nothing completed)."""
    from sqlalchemy import select

    from forgetd.db.models import Checkpoint, Evaluation, Model
    from forgetd.pipeline import load_evidence

    with ctx.session() as s:
        m = s.execute(select(Model).where(Model.name == model)).scalar_one()
        checkpoint_id = s.execute(
            select(Checkpoint.id).where(Checkpoint.model_id == m.id, Checkpoint.version == version)
        ).scalar_one()
        uri = s.execute(
            select(Evaluation.evidence_uri)
            .where(Evaluation.target_kind == "checkpoint", Evaluation.target_id == checkpoint_id,
                   Evaluation.evidence_uri.is_not(None))
            .order_by(Evaluation.id.desc()).limit(1)
        ).scalar_one_or_none()
    if uri is None:
        return None
    payload = load_evidence(ctx, uri)
    person_of = {request: person for person, request in requests.items()}
    return {person_of[r["request"]]: r for r in payload.get("results", []) if r["request"] in person_of}


def _before_after(ctx, model: str, version: int, requests: dict[str, str]) -> tuple[dict, dict]:
    """Before (v0) and after (the served checkpoint) tables: the pipeline's recorded verification where it has
    one for a person (the same halves and metrics, so nothing is measured twice), measured here otherwise (a
    request that did not complete is not in the served checkpoint's verification)."""
    people = list(requests)
    recorded = _recorded(ctx, model, version, requests) or {}
    missing = [p for p in people if p not in recorded]
    measured_before = _measure(ctx, model, 0, missing, requested=people) if missing else None
    measured_after = _measure(ctx, model, version, missing, requested=people) if missing else None
    tables = []
    for side, measured in (("original", measured_before), ("metrics", measured_after)):
        per_person = {}
        for person in people:
            if person in recorded:
                metrics = recorded[person][side]
                per_person[person] = {key: metrics[key] for key in ("forget_qa_acc", "mia_auc", "mia_auc_unseen")}
            else:
                per_person[person] = measured["people"][person]
        source = recorded[next(iter(recorded))][side] if recorded else measured
        tables.append({"people": per_person, "retain_qa_acc": source["retain_qa_acc"],
                       "reference_qa_acc": source["reference_qa_acc"]})
    return tables[0], tables[1]


def run(as_: Callable[[str], "api.Context"], cache_dir: Path, workdir: Path, *, progress=None) -> dict[str, Any]:
    from forgetd.demo.llm_dataset import write_corpus_dataset
    from forgetd.demo.tiny_lm import ensure_tiny_lm, load_demo_corpus

    model_dir = ensure_tiny_lm(cache_dir, progress=progress)
    corpus = load_demo_corpus(model_dir)
    dataset = write_corpus_dataset(corpus, workdir / "demo-lm-dataset.json")
    api.model_register(as_("alice"), "demo-lm", "causal_lm", str(model_dir), dataset=str(dataset))
    people = [p.id for p in corpus.forget_candidates[:3]]
    requests = []
    for person in people:
        record = api.request_submit(
            as_("alice"),
            {"model": "demo-lm", "policy": "gdpr-erasure", "subject": f"{person}@people.example",
             "forget": {"corpus_ids": [person]}},
        )
        api.request_verify_identity(as_("alice"), record["id"])
        api.request_approve(as_("bob"), record["id"])
        requests.append(record["id"])
    report = api.tick(as_("alice"), model="demo-lm", progress=progress)
    served = [c for c in api.checkpoint_list(as_("alice"), "demo-lm") if "prod" in c["aliases"]][0]
    before, after = _before_after(as_("alice"), "demo-lm", served["version"], dict(zip(people, requests)))
    statuses = {r: api.request_show(as_("alice"), r) for r in requests}
    return {
        "model_dir": str(model_dir),
        "people": people,
        "requests": [{"id": r, "status": statuses[r]["status"], "reason": statuses[r]["status_reason"]} for r in requests],
        "served_version": served["version"],
        "before": before,
        "after": after,
        "tick": report,
    }
