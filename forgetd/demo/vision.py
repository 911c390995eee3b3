"""The image-classifier part of the demo: a tiny ViT on scikit-learn's digits forgets two classes, one
request at a time (each adapter trained against the checkpoint that already forgot the previous class),
through the same requests, jobs, store, composition, alias and audit code as the language model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from forgetd import api

CLASSES = (3, 8)


def _measure(ctx, model: str, version: int, labels: list[int]) -> dict[str, Any]:
    from sqlalchemy import select

    from forgetd import pipeline
    from forgetd.db.models import Checkpoint, Model
    from forgetd.families import image_classifier as family

    with ctx.session() as s:
        m = s.execute(select(Model).where(Model.name == model)).scalar_one()
        checkpoint = s.execute(select(Checkpoint).where(Checkpoint.model_id == m.id, Checkpoint.version == version)).scalar_one()
        weights = pipeline.checkpoint_dir(ctx, checkpoint)
        base = s.execute(select(Checkpoint).where(Checkpoint.model_id == m.id, Checkpoint.version == 0)).scalar_one()
        base_weights = pipeline.checkpoint_dir(ctx, base)
        dataset = pipeline._dataset(ctx, m)
    data = family.forget_data(dataset, [{"labels": labels}]).verification_half()
    original = family.evaluate(family.load_model(base_weights), None, data)
    return family.evaluate(family.load_model(weights), None, data, original=original)


def run(as_: Callable[[str], "api.Context"], cache_dir: Path, *, progress=None) -> dict[str, Any]:
    from forgetd.demo import digits

    root = digits.ensure_digits_vit(cache_dir, progress=progress)
    api.model_register(as_("alice"), "demo-digits", "image_classifier", str(digits.model_path(root)),
                       dataset=str(digits.dataset_path(root)))
    labels = list(CLASSES)
    before = _measure(as_("alice"), "demo-digits", 0, labels)
    steps = []
    for label in CLASSES:
        record = api.request_submit(as_("alice"), {"model": "demo-digits", "policy": "class-removal",
                                                   "subject": "catalogue-team@example.org",
                                                   "forget": {"labels": [label]}})
        api.request_approve(as_("bob"), record["id"])
        api.tick(as_("alice"), model="demo-digits", progress=progress)
        shown = api.request_show(as_("alice"), record["id"])
        served = [c for c in api.checkpoint_list(as_("alice"), "demo-digits") if "prod" in c["aliases"]][0]
        after = _measure(as_("alice"), "demo-digits", served["version"], labels)
        steps.append({"request": record["id"], "label": label, "status": shown["status"],
                      "reason": shown["status_reason"], "served_version": served["version"], "after": after})
    return {"classes": labels, "before": before, "steps": steps, "test_accuracy": digits.read_demo_meta(root)
            .get("metrics", {}).get("test_acc")}
