"""The causal-LM part of the demo: the tiny people model, three erasure requests, one tick, and a
before/after table of what the served model still knows."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from forgetd import api


def _measure(ctx, model: str, version: int, people: list[str]) -> dict[str, Any]:
    """Forget-set metrics per person and retain accuracy, on one checkpoint of the demo model."""
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
    data = causal_lm.forget_data(dataset, [{"corpus_ids": people}]).verification_half()
    per_person = {}
    for person in people:
        one = causal_lm.forget_data(dataset, [{"corpus_ids": [person]}]).verification_half()
        per_person[person] = {
            "forget_qa_acc": qa_accuracy(lm, tokenizer, one.forget_qa),
            "mia_auc": mia_auc(lm, tokenizer, one.forget_texts, one.reference_texts),
        }
    return {
        "people": per_person,
        "retain_qa_acc": qa_accuracy(lm, tokenizer, data.retain_qa),
        "reference_qa_acc": qa_accuracy(lm, tokenizer, data.reference_qa),
    }


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
    before = _measure(as_("alice"), "demo-lm", 0, people)
    report = api.tick(as_("alice"), progress=progress)
    served = [c for c in api.checkpoint_list(as_("alice"), "demo-lm") if "prod" in c["aliases"]][0]
    after = _measure(as_("alice"), "demo-lm", served["version"], people)
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
