"""FORGETD_DEVICE=cuda end to end on the tiny test LM: the adapter trains on the GPU, and the request
completes through composition, verification and promotion; the served checkpoint answers none of the
person's questions. Skipped without CUDA."""

from __future__ import annotations

from dataclasses import replace

import pytest

torch = pytest.importorskip("torch")

DEVICE = "cuda"
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture
def db_url(sqlite_url):
    return sqlite_url


def test_a_request_trained_on_the_gpu_completes_and_is_forgotten(settings, tmp_path, tiny_lm):
    from sqlalchemy import select

    from forgetd import api, pipeline
    from forgetd.datasets import load_dataset_file
    from forgetd.db.models import Checkpoint
    from forgetd.families import causal_lm
    from forgetd.verify.causal_lm import qa_accuracy
    from tests.conftest import LOOSE, pipeline_dirs

    policies, adapters = pipeline_dirs(tmp_path, loose=LOOSE)
    ctx = api.open_context(replace(settings, policies_dir=policies, adapters_dir=adapters, device=DEVICE))
    try:
        model_dir, dataset, people = tiny_lm
        api.model_register(ctx, "lm", "causal_lm", str(model_dir), dataset=str(dataset))
        record = api.request_submit(ctx, {"model": "lm", "policy": "loose", "subject": "gpu@example.org",
                                          "forget": {"corpus_ids": [people[0]]}})
        if DEVICE != "cpu":
            torch.cuda.reset_peak_memory_stats()
        api.tick(ctx)
        if DEVICE != "cpu":
            assert torch.cuda.max_memory_allocated() > 0  # the tick's training ran on the device
        shown = api.request_show(ctx, record["id"])
        assert shown["status"] == "completed", shown.get("status_reason")
        checkpoints = api.checkpoint_list(ctx, "lm")
        assert [(c["version"], c["status"], c["covers"]) for c in checkpoints][1] == (1, "served", [record["id"]])
        with ctx.session() as s:
            served = s.execute(select(Checkpoint).where(Checkpoint.version == 1)).scalar_one()
            weights = pipeline.checkpoint_dir(ctx, served)
        data = causal_lm.forget_data(load_dataset_file(dataset), [{"corpus_ids": [people[0]]}])
        model = causal_lm.load_model(weights)
        assert qa_accuracy(model, causal_lm.load_tokenizer(weights), data.forget_qa) == 0.0
    finally:
        ctx.close()

