"""A causal LM's registration halves its dataset's reference set on the model's own Min-K% scores, stores
the split with the dataset (nothing else changes), and keeps a split the dataset gives."""

from __future__ import annotations

import json

import pytest

from forgetd.datasets import parse_dataset
from forgetd.verify.causal_lm import auc


def test_registration_matches_the_halves_on_the_model_and_keeps_a_given_split(ctx, tiny_lm, tmp_path):
    torch = pytest.importorskip("torch")
    from forgetd import api
    from forgetd.families import causal_lm
    from forgetd.verify.causal_lm import min_k_scores

    model_dir, dataset_path, _ = tiny_lm
    registered = api.model_register(ctx, "lm", "causal_lm", str(model_dir), dataset=str(dataset_path))
    stored = json.loads((ctx.store.open_dir("dataset", registered["dataset_sha256"]) / "dataset.json").read_text())
    raw = json.loads(dataset_path.read_text())
    assert {k: v for k, v in stored.items() if k != "reference_split"} == raw  # nothing else changes
    dataset = parse_dataset(stored)
    texts = dataset.texts_of(dataset.reference)
    with torch.no_grad():
        scores = min_k_scores(causal_lm.load_model(model_dir), causal_lm.load_tokenizer(model_dir), texts)
    halves = [[s for s, h in zip(scores, dataset.reference_split) if h == half] for half in (0, 1)]
    assert abs(len(halves[0]) - len(halves[1])) <= 1 and abs(auc(*halves) - 0.5) <= 0.02
    (event,) = [e for e in api.audit_log(ctx) if e["action"] == "model.registered"]
    assert event["payload"]["reference_split"] == "matched"

    given = tmp_path / "given.json"
    given.write_text(json.dumps({**raw, "reference_split": [i % 2 for i in range(len(texts))]}))
    again = api.model_register(ctx, "lm2", "causal_lm", str(model_dir), dataset=str(given))
    assert (ctx.store.open_dir("dataset", again["dataset_sha256"]) / "dataset.json").read_bytes() == given.read_bytes()
