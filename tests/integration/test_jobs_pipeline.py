"""The pipeline as jobs on a tiny causal LM: a train job whose lease is taken over mid-training publishes
nothing; a job that exhausts its attempts fails the requests it held, which an operator retries."""

from __future__ import annotations

import shutil
from dataclasses import replace
from datetime import timedelta

import pytest

pytest.importorskip("peft")

from sqlalchemy import select  # noqa: E402

from forgetd import api  # noqa: E402
from forgetd.db.models import Adapter, Job, LineageEdge, Request  # noqa: E402
from forgetd.jobs import planner, queue  # noqa: E402
from forgetd.jobs.queue import Backoff  # noqa: E402
from forgetd.jobs.runner import LEASE_LOST, run_claim  # noqa: E402
from tests.conftest import LOOSE, edit_recipe, pipeline_dirs  # noqa: E402


@pytest.fixture
def pipe(settings, tmp_path, tiny_lm):
    policies, adapters = pipeline_dirs(tmp_path, loose=LOOSE)
    edit_recipe(adapters / "npo-lora.yaml", max_steps=6)
    model_dir, dataset, people = tiny_lm
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    ctx = api.open_context(replace(settings, policies_dir=policies, adapters_dir=adapters, max_attempts=2,
                                   retry_base_seconds=0.0, retry_cap_seconds=0.0))
    api.model_register(ctx, "lm", "causal_lm", str(copy), dataset=str(dataset))
    yield ctx, people, copy
    ctx.close()


def _submit(ctx, person: str) -> str:
    return api.request_submit(ctx, {"model": "lm", "policy": "loose", "subject": f"{person}@example.org",
                                    "forget": {"corpus_ids": [person]}})["id"]


def _claim(ctx, owner: str, *, now=None):
    with ctx.session() as s:
        return queue.claim(s, owner, now=now or api.utcnow(), lease_seconds=30, executor="inline")


def test_a_train_job_whose_lease_is_taken_over_mid_training_publishes_nothing(pipe):
    ctx, people, _ = pipe
    request_id = _submit(ctx, people[0])
    planner.plan(ctx, now=api.utcnow())
    stale = _claim(ctx, "old")
    assert stale.kind == "train"
    taken = {}

    def steal(event: dict) -> None:
        if event.get("phase") == "start" and not taken:
            later = api.utcnow() + timedelta(seconds=31)
            with ctx.session() as s:
                queue.reap(s, now=later, backoff=Backoff(0, 0))
            taken["fresh"] = _claim(ctx, "new", now=later)

    outcome, _ = run_claim(ctx, stale, backoff=Backoff(0, 0), progress=steal)
    assert outcome == LEASE_LOST and taken["fresh"].attempt == 2
    with ctx.session() as s:
        assert s.execute(select(Adapter)).scalars().all() == []
        assert s.execute(select(LineageEdge).where(LineageEdge.src_kind == "adapter")).scalars().all() == []
        request = s.execute(select(Request).where(Request.public_id == request_id)).scalar_one()
        assert request.status.value == "training"
        job = s.get(Job, stale.job_id)
        assert job.lease_owner == "new" and job.status == "running"
    stored = list((ctx.settings.home / "store" / "adapter").rglob("adapter_config.json"))
    assert len(stored) == 1  # the stale worker's adapter reached the store, and nothing references it

    outcome, result = run_claim(ctx, taken["fresh"], backoff=Backoff(0, 0))
    assert outcome == "succeeded" and result["adapter"] == stored[0].parent.name
    with ctx.session() as s:
        assert len(s.execute(select(Adapter)).scalars().all()) == 1
    assert api.tick(ctx)["completed"] == [request_id]


def test_a_job_out_of_attempts_fails_its_requests_and_the_operator_retries(pipe):
    ctx, people, model_dir = pipe
    request_id = _submit(ctx, people[1])
    tokenizer = model_dir / "tokenizer.json"
    saved = tokenizer.read_bytes()
    tokenizer.unlink()  # not a weight file, so the hash check passes and loading fails: a retryable error
    report = api.tick(ctx)
    assert report["failed"] == [{"request": request_id, "stage": "train"}]
    train = api.job_list(ctx, kind="train")[0]
    assert train["status"] == "dead" and train["attempts"] == 2
    shown = api.request_show(ctx, request_id)
    assert shown["status"] == "failed" and "dead after 2 attempt(s)" in shown["status_reason"]
    # named, with the fix (it was a bare ValueError): the weight hash does not cover the tokenizer
    assert "the tokenizer under" in shown["status_reason"] and "restore the model directory" in shown["status_reason"]

    tokenizer.write_bytes(saved)
    assert api.request_retry(ctx, request_id)["status"] == "scheduled"
    assert api.tick(ctx)["completed"] == [request_id]
    assert api.audit_verify(ctx)["ok"]


def test_retry_refuses_a_request_that_has_not_failed(pipe):
    from forgetd.errors import DomainError, InputError

    ctx, people, _ = pipe
    request_id = _submit(ctx, people[2])
    with pytest.raises(DomainError, match="not failed"):
        api.request_retry(ctx, request_id)
    with pytest.raises(InputError, match="--from"):
        api.request_retry(ctx, request_id, "verify")
