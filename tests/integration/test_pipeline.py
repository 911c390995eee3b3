"""The forgetting pipeline end to end on a tiny causal LM: train, evaluate, compose, verify, promote,
and the failure paths (corrupt adapter, failed verification, refused rollback)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from sqlalchemy import select  # noqa: E402

from forgetd import api, pipeline  # noqa: E402
from forgetd.db.models import Checkpoint  # noqa: E402
from forgetd.errors import DomainError  # noqa: E402
from tests.conftest import LOOSE, POLICY, edit_recipe, pipeline_dirs  # noqa: E402


@pytest.fixture
def db_url(sqlite_url):
    return sqlite_url


@pytest.fixture
def pipe(settings, tmp_path, tiny_lm):
    """api context with test policies (loose: verification passes; strict: it cannot) and fast recipes."""
    policies, adapters = pipeline_dirs(tmp_path, loose=LOOSE, strict=(1.0, 1.5, 0.5))
    edit_recipe(adapters / "npo-lora.yaml", max_steps=6)
    ctx = api.open_context(replace(settings, policies_dir=policies, adapters_dir=adapters))
    model_dir, dataset, people = tiny_lm
    api.model_register(ctx, "lm", "causal_lm", str(model_dir), dataset=str(dataset))
    yield ctx, people
    ctx.close()


def _submit(ctx, person: str, policy: str = "loose") -> str:
    record = api.request_submit(
        ctx, {"model": "lm", "policy": policy, "subject": f"{person}@example.org", "forget": {"corpus_ids": [person]}}
    )
    assert record["status"] == "approved"
    return record["id"]


def test_requests_complete_through_one_verified_checkpoint(pipe):
    ctx, people = pipe
    first, second = _submit(ctx, people[0]), _submit(ctx, people[1])
    report = api.tick(ctx)
    # one request per round: the second adapter is trained against v1, which carries the first
    assert sorted(report["completed"]) == sorted([first, second]) and report["candidates"] == ["lm@v1", "lm@v2"]
    checkpoints = api.checkpoint_list(ctx, "lm")
    assert [(c["version"], c["status"], c["aliases"]) for c in checkpoints] == [
        (0, "retired", []), (1, "retired", []), (2, "served", ["prod"])]
    assert sorted(checkpoints[2]["covers"]) == sorted([first, second]) and len(checkpoints[2]["adapters"]) == 2
    assert checkpoints[1]["covers"] == [first]
    shown = api.checkpoint_show(ctx, "lm", 1)
    assert shown["evaluations"] and all(e["passed"] for e in shown["evaluations"] if e["passed"] is not None)

    lineage = api.lineage_request(ctx, first)
    assert lineage["honoured_at"] and [c["version"] for c in lineage["checkpoints"]] == [1, 2]
    relations = {e["relation"] for e in lineage["edges"]}
    assert {"trained_for", "trained_against", "composed_into"} <= relations
    subject = api.lineage_subject(ctx, f"{people[0]}@example.org")
    served = subject["models"][0]["served"]
    assert [(s["version"], s["contains_subject_data"]) for s in served] == [(0, True), (1, False), (2, False)]
    assert subject["models"][0]["data_served_until"] == served[0]["to"]
    assert api.audit_verify(ctx)["ok"]


def test_a_later_adapter_holds_what_the_served_checkpoint_already_forgets(pipe):
    from forgetd.db.models import Model, Request

    ctx, people = pipe
    first = _submit(ctx, people[0])
    api.tick(ctx)
    second, third = _submit(ctx, people[1]), _submit(ctx, people[2])
    with ctx.session() as s:
        model = s.execute(select(Model).where(Model.name == "lm")).scalar_one()
        request = s.execute(select(Request).where(Request.public_id == second)).scalar_one()
        held = pipeline._forget_data(ctx, s, model, [request], keep_forgotten=True).forgotten
        plain = pipeline._forget_data(ctx, s, model, [request]).forgotten
        done = s.execute(select(Request).where(Request.public_id == first)).scalar_one()
        own = pipeline._forget_data(ctx, s, model, [done])
    # only the completed request (the served checkpoint's) is held, as its forget data; the open one is not
    assert plain == [] and held == [(own.forget_texts, own.forget_qa)] and own.forget_texts and own.forget_qa
    api.tick(ctx)
    metas = []
    for version in (1, 2, 3):
        record = api.checkpoint_show(ctx, "lm", version)
        newest = record["adapters"][-1]
        metas.append(json.loads((ctx.store.open_dir("adapter", newest) / pipeline.ADAPTER_META).read_text()))
    assert [m["train"]["kept_requests"] for m in metas] == [0, 1, 2]
    assert {r["id"]: r["status"] for r in (api.request_show(ctx, i) for i in (first, second, third))} == {
        first: "completed", second: "completed", third: "completed"}


def test_requests_queued_together_can_share_one_adapter(pipe):
    ctx, people = pipe
    edit_recipe(ctx.settings.adapters_dir / "npo-lora.yaml", batch_requests=8)
    first, second = _submit(ctx, people[0]), _submit(ctx, people[1])
    report = api.tick(ctx)
    assert sorted(report["completed"]) == sorted([first, second]) and report["candidates"] == ["lm@v1"]
    v1 = api.checkpoint_show(ctx, "lm", 1)
    assert sorted(v1["covers"]) == sorted([first, second]) and len(v1["adapters"]) == 1
    assert api.lineage_request(ctx, first)["adapters"] == api.lineage_request(ctx, second)["adapters"]


def test_a_shared_adapter_rejected_for_one_request_is_composed_for_none(pipe):
    ctx, people = pipe
    edit_recipe(ctx.settings.adapters_dir / "npo-lora.yaml", batch_requests=8)
    passing, refused = _submit(ctx, people[0]), _submit(ctx, people[1])
    pipeline.schedule(ctx, now=api.utcnow())
    pipeline.train(ctx, [passing, refused], now_fn=api.utcnow)  # one adapter for both
    assert pipeline.evaluate_adapter(ctx, passing, now_fn=api.utcnow) is True
    # the policy tightened before the second request is verified: its verification fails and rejects the adapter
    policy = ctx.settings.policies_dir / "loose.yaml"
    policy.write_text(POLICY.format(name="loose", qa=1.0, retain=1.5, mia=1.0))
    assert pipeline.evaluate_adapter(ctx, refused, now_fn=api.utcnow) is False
    # composing fails the request that passed (its adapter is gone) instead of crashing, and builds nothing
    assert pipeline.compose(ctx, "lm", now_fn=api.utcnow) is None
    shown = api.request_show(ctx, passing)
    assert shown["status"] == "failed" and "sharing it" in shown["status_reason"]
    assert api.request_show(ctx, refused)["status"] == "failed"
    assert [c["version"] for c in api.checkpoint_list(ctx, "lm")] == [0]
    # the policy loosened again: verifying the adapter again for the request that passed does not undo the
    # other request's rejection, verifying it again for that one does, and it is composed for both
    policy.write_text(POLICY.format(name="loose", qa=1.0, retain=0.0, mia=1.0))
    api.request_retry(ctx, passing, "evaluate")
    assert pipeline.evaluate_adapter(ctx, passing, now_fn=api.utcnow) is True
    assert pipeline.compose(ctx, "lm", now_fn=api.utcnow) is None
    api.request_retry(ctx, refused, "evaluate")
    assert pipeline.evaluate_adapter(ctx, refused, now_fn=api.utcnow) is True
    api.request_retry(ctx, passing)  # from compose, where it failed
    report = api.tick(ctx)
    assert sorted(report["completed"]) == sorted([passing, refused]) and report["candidates"] == ["lm@v1"]


def test_a_request_verified_again_after_its_own_rejection_completes(pipe):
    """`request retry` after a failed verification (a threshold fixed since) re-verifies the adapter; the
    composer used to find it still rejected and failed the request, blaming another request."""
    ctx, people = pipe
    policy = ctx.settings.policies_dir / "loose.yaml"
    policy.write_text(POLICY.format(name="loose", qa=1.0, retain=1.5, mia=1.0))
    one = _submit(ctx, people[0])
    assert api.tick(ctx)["completed"] == [] and api.request_show(ctx, one)["failed_step"] == "evaluate"
    policy.write_text(POLICY.format(name="loose", qa=1.0, retain=0.0, mia=1.0))
    assert api.request_retry(ctx, one)["status"] == "evaluating"
    report = api.tick(ctx)
    assert report["completed"] == [one] and report["candidates"] == ["lm@v1"]


def test_stored_artifacts_load_with_stock_libraries(pipe):
    import peft
    import transformers

    ctx, people = pipe
    _submit(ctx, people[0])
    api.tick(ctx)
    record = api.checkpoint_show(ctx, "lm", 1)
    adapter_dir = ctx.store.open_dir("adapter", record["adapters"][0])
    meta = json.loads((adapter_dir / pipeline.ADAPTER_META).read_text())
    assert meta["recipe"] == "npo-lora" and meta["trained_against"]["version"] == 0
    base = Path(api.checkpoint_show(ctx, "lm", 0)["uri"])
    peft.PeftModel.from_pretrained(transformers.AutoModelForCausalLM.from_pretrained(base), adapter_dir)
    merged = ctx.store.open_dir("checkpoint", record["uri"].rsplit("/", 1)[-1])
    transformers.AutoModelForCausalLM.from_pretrained(merged, local_files_only=True)
    transformers.AutoTokenizer.from_pretrained(merged, local_files_only=True)


def test_a_flipped_byte_fails_the_request_before_any_candidate(pipe):
    ctx, people = pipe
    public_id = _submit(ctx, people[0])
    pipeline.schedule(ctx, now=api.utcnow())
    sha = pipeline.train(ctx, [public_id], now_fn=api.utcnow)
    assert pipeline.evaluate_adapter(ctx, public_id, now_fn=api.utcnow)
    weights = ctx.store.path("adapter", sha) / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    assert pipeline.compose(ctx, "lm", now_fn=api.utcnow) is None
    shown = api.request_show(ctx, public_id)
    assert shown["status"] == "failed" and "corrupt" in shown["status_reason"]
    assert [c["version"] for c in api.checkpoint_list(ctx, "lm")] == [0]


def test_a_candidate_failing_verification_is_never_promoted(pipe):
    ctx, people = pipe
    public_id = _submit(ctx, people[0], policy="strict")
    report = api.tick(ctx)
    assert report["completed"] == []
    shown = api.request_show(ctx, public_id)
    assert shown["status"] == "failed" and "retain_qa_acc_ratio" in shown["status_reason"]
    served = [c for c in api.checkpoint_list(ctx, "lm") if "prod" in c["aliases"]]
    assert [c["version"] for c in served] == [0]


def test_an_operator_retry_from_training_trains_a_new_adapter_with_the_next_seed(pipe):
    """Against the same checkpoint, the same seed would rebuild the refused adapter byte for byte."""
    from forgetd.db.models import Adapter, AdapterRequest, Request

    ctx, people = pipe
    public_id = _submit(ctx, people[0], policy="strict")
    seeds = []
    for attempt in range(2):
        if attempt:
            assert api.request_retry(ctx, public_id, "train")["status"] == "scheduled"
        api.tick(ctx)
        assert api.request_show(ctx, public_id)["status"] == "failed"
        with ctx.session() as s:
            request_id = s.execute(select(Request.id).where(Request.public_id == public_id)).scalar_one()
            shas = s.execute(select(Adapter.sha256).join(AdapterRequest, AdapterRequest.adapter_id == Adapter.id)
                             .where(AdapterRequest.request_id == request_id).order_by(Adapter.id)).scalars().all()
        meta = json.loads((ctx.store.open_dir("adapter", shas[-1]) / "forgetd_adapter.json").read_text())
        seeds.append(meta["recipe_spec"]["train"]["seed"])
    assert len(shas) == len(set(shas)) == 2 and seeds == [0, 1]


def test_rollback_that_would_resurrect_data_is_refused(pipe):
    ctx, people = pipe
    first = _submit(ctx, people[0])
    api.tick(ctx)
    second = _submit(ctx, people[1])
    api.tick(ctx)
    versions = {c["version"]: c for c in api.checkpoint_list(ctx, "lm")}
    assert versions[2]["aliases"] == ["prod"] and sorted(versions[2]["covers"]) == sorted([first, second])
    for target in (None, 1, 0):
        with pytest.raises(DomainError, match="resurrect"):
            api.checkpoint_rollback(ctx, "lm", target)
    assert [c["version"] for c in api.checkpoint_list(ctx, "lm") if c["aliases"]] == [2]
    # the second adapter was trained against v1, the checkpoint serving when it was trained
    with ctx.session() as s:
        v1_id = s.execute(select(Checkpoint.id).where(Checkpoint.version == 1)).scalar_one()
    assert api.lineage_request(ctx, second)["adapters"][0]["trained_against_id"] == v1_id


def test_a_diverging_run_fails_and_stores_nothing(pipe):
    ctx, people = pipe
    edit_recipe(ctx.settings.adapters_dir / "npo-lora.yaml", loss_explode=1.0e-9)
    public_id = _submit(ctx, people[0])
    report = api.tick(ctx)
    assert report["failed"] == [{"request": public_id, "stage": "train"}]
    shown = api.request_show(ctx, public_id)
    assert shown["status"] == "failed" and shown["failed_step"] == "train" and "diverged" in shown["status_reason"]
    assert not (ctx.settings.home / "store" / "adapter").exists()
    assert api.lineage_request(ctx, public_id)["adapters"] == []


def test_the_step_gate_judges_each_adapter_against_the_checkpoint_it_started_from(pipe):
    """`retain_acc_min_ratio_step`: the first adapter is judged against the base, a later one against the
    checkpoint it was trained on; a step threshold no adapter can meet fails the request naming it."""
    from forgetd.db.models import Evaluation, Request

    ctx, people = pipe
    policies = ctx.settings.policies_dir
    for name, step in (("stepwise", 0.0), ("stepgate", 1.5)):
        (policies / f"{name}.yaml").write_text(POLICY.format(name=name, qa=1.0, retain=0.0, mia=0.5).replace(
            "mia_auc_max_dev: 0.5}", f"mia_auc_max_dev: 0.5, retain_acc_min_ratio_step: {step}}}"))
    first, second = _submit(ctx, people[0], policy="stepwise"), _submit(ctx, people[1], policy="stepwise")
    assert sorted(api.tick(ctx)["completed"]) == sorted([first, second])

    def step_evaluations(public_id):
        with ctx.session() as s:
            request_id = s.execute(select(Request.id).where(Request.public_id == public_id)).scalar_one()
            return s.execute(select(Evaluation).where(Evaluation.request_id == request_id,
                                                      Evaluation.target_kind == "adapter",
                                                      Evaluation.metric == "check:retain_qa_acc_ratio_step")).scalars().all()

    evidence = {}
    for public_id in (first, second):
        (row,) = step_evaluations(public_id)
        digest = row.evidence_uri.rsplit("/", 1)[-1]
        evidence[public_id] = json.loads((ctx.store.open_dir("evidence", digest) / "evidence.json").read_text())
    assert evidence[first]["start"] == evidence[first]["original"]  # trained against v0, the base
    assert evidence[second]["start"] != evidence[second]["original"]  # trained against v1

    third = _submit(ctx, people[2], policy="stepgate")
    api.tick(ctx)
    shown = api.request_show(ctx, third)
    assert shown["status"] == "failed" and "retain_qa_acc_ratio_step" in shown["status_reason"]
    (row,) = step_evaluations(third)
    assert row.passed is False and row.threshold == 1.5


def test_stop_check_judges_an_earlier_request_like_the_new_one(tiny_lm):
    from forgetd.datasets import load_dataset_file
    from forgetd.families import causal_lm
    from forgetd.training.common import StopCheck
    from forgetd.verify.causal_lm import qa_correct

    model_dir, dataset, people = tiny_lm
    model, tokenizer = causal_lm.load_model(model_dir), causal_lm.load_tokenizer(model_dir)
    data = causal_lm.forget_data(load_dataset_file(dataset), [{"corpus_ids": [people[0]]}]).calibration_half()
    stop = StopCheck(forget_qa=data.forget_qa, forget_texts=data.forget_texts, reference_qa=data.reference_qa,
                     reference_texts=data.reference_texts, qa_margin=0.0, mia_margin=0.05,
                     kept=[(data.forget_texts, data.forget_qa), (data.reference_texts, data.reference_qa),
                           ([text[::-1] for text in data.reference_texts], [])])
    measured = stop.measure(model, tokenizer)
    # the same person held as an earlier request gets the new request's verdict: still known, so revived;
    # the reference set itself, held the same way, looks exactly like the reference; reversed text is far
    # less likely than any unseen person's, so sunk below the band
    assert measured["forget_qa_acc"] > stop.reference_qa_acc and stop.last_revived == [0]
    assert stop.last_sunk == [2] and measured["kept_sunk"] == 1.0
    # the new request's answers one by one, for the recipe to push only those still given
    assert stop.last_answered == qa_correct(model, tokenizer, data.forget_qa) and len(stop.last_answered) == len(data.forget_qa)
    assert measured["kept_revived"] == 1.0 and not stop.satisfied(measured)


def test_earlier_requests_can_be_held_to_a_narrower_band_than_the_new_one(tiny_lm):
    from forgetd.datasets import load_dataset_file
    from forgetd.families import causal_lm
    from forgetd.training.common import StopCheck
    from forgetd.verify.causal_lm import auc, min_k_scores

    model_dir, dataset, people = tiny_lm
    model, tokenizer = causal_lm.load_model(model_dir).eval(), causal_lm.load_tokenizer(model_dir)
    data = causal_lm.forget_data(load_dataset_file(dataset), [{"corpus_ids": [people[0]]}]).calibration_half()
    # a held group between a known person and the reference: its AUC lies strictly between 0.5 and 1
    held = data.reference_texts[: len(data.forget_texts)] + data.forget_texts
    deviation = abs(auc(min_k_scores(model, tokenizer, held), min_k_scores(model, tokenizer, data.reference_texts)) - 0.5)
    assert 0.05 < deviation < 0.45
    common = dict(forget_qa=[], forget_texts=data.forget_texts, reference_qa=[], reference_texts=data.reference_texts,
                  qa_margin=1.0, mia_margin=deviation + 0.02, reference_qa_acc=0.0, kept=[(held, [])])
    wide, narrow = StopCheck(**common), StopCheck(**common, kept_mia_margin=deviation - 0.02)
    for stop in (wide, narrow):
        stop.measure(model, tokenizer)
    assert wide.last_revived + wide.last_sunk == [] and narrow.last_revived + narrow.last_sunk == [0]


def test_the_demo_table_reads_the_recorded_verification_and_measures_what_it_lacks(pipe):
    from forgetd.demo import llm as llm_demo

    ctx, people = pipe
    done, refused = _submit(ctx, people[0]), _submit(ctx, people[1], policy="strict")
    api.tick(ctx)
    assert api.request_show(ctx, refused)["status"] == "failed"
    version = [c for c in api.checkpoint_list(ctx, "lm") if "prod" in c["aliases"]][0]["version"]
    assert version == 1
    before, after = llm_demo._before_after(ctx, "lm", version, {people[0]: done, people[1]: refused})
    # the completed person's numbers come from the checkpoint's recorded verification, the refused one's are
    # measured: both must equal a fresh measurement of the same checkpoints
    for measured, table in ((llm_demo._measure(ctx, "lm", 0, people[:2]), before),
                            (llm_demo._measure(ctx, "lm", version, people[:2]), after)):
        for person in people[:2]:
            assert table["people"][person] == pytest.approx(measured["people"][person])
        assert table["retain_qa_acc"] == pytest.approx(measured["retain_qa_acc"])
        assert table["reference_qa_acc"] == pytest.approx(measured["reference_qa_acc"])
    assert llm_demo._recorded(ctx, "lm", version, {people[0]: done, people[1]: refused}).keys() == {people[0]}


def test_a_tick_for_one_model_leaves_the_other_models_requests_alone(pipe, tiny_lm):
    from forgetd.errors import NotFoundError

    ctx, people = pipe
    model_dir, dataset, _ = tiny_lm
    api.model_register(ctx, "lm2", "causal_lm", str(model_dir), dataset=str(dataset))
    ours = _submit(ctx, people[0])
    theirs = api.request_submit(ctx, {"model": "lm2", "policy": "loose", "subject": f"{people[1]}@example.org",
                                      "forget": {"corpus_ids": [people[1]]}})["id"]
    with pytest.raises(NotFoundError):
        api.tick(ctx, model="no-such-model")
    report = api.tick(ctx, model="lm")
    assert report["completed"] == [ours] and report["candidates"] == ["lm@v1"]
    # planned (its train job is queued) but not run; and not reported as this tick's waiting work
    assert api.request_show(ctx, theirs)["status"] == "scheduled"
    assert report["waiting"] == []
    assert [c["version"] for c in api.checkpoint_list(ctx, "lm2")] == [0]
    assert api.tick(ctx)["completed"] == [theirs]  # an unscoped tick takes what is left


def test_a_cuda_device_on_a_worker_without_one_is_refused_before_anything_changes(pipe):
    import torch

    from forgetd.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    ctx, people = pipe
    public_id = _submit(ctx, people[0])
    # a tick on this machine: refused up front
    jobs = api.job_list(ctx)
    misconfigured = api.open_context(replace(ctx.settings, device="cuda"))
    try:
        with pytest.raises(ConfigError, match="sees no CUDA device") as refused:
            api.tick(misconfigured)
        assert refused.value.field == "FORGETD_DEVICE"
    finally:
        misconfigured.close()
    assert api.request_show(ctx, public_id)["status"] == "approved"
    assert api.job_list(ctx) == jobs
    # a train job on a worker elsewhere (Ray): refused before its requests change state
    pipeline.schedule(ctx, now=api.utcnow())
    for setting in ("cuda", "cuda:1"):
        misconfigured = api.open_context(replace(ctx.settings, device=setting))
        try:
            with pytest.raises(ConfigError, match="sees no CUDA device") as refused:
                pipeline.train(misconfigured, [public_id], now_fn=api.utcnow)
        finally:
            misconfigured.close()
        assert refused.value.field == "FORGETD_DEVICE"
    assert api.request_show(ctx, public_id)["status"] == "scheduled"
    assert not (ctx.settings.home / "store" / "adapter").exists()
    # "auto" falls back to the CPU here and trains
    auto = api.open_context(replace(ctx.settings, device="auto"))
    try:
        assert pipeline.train(auto, [public_id], now_fn=api.utcnow)
    finally:
        auto.close()
    assert api.request_show(ctx, public_id)["status"] == "evaluating"
    # evaluation is refused the same way, and goes on with "auto"
    misconfigured = api.open_context(replace(ctx.settings, device="cuda"))
    try:
        with pytest.raises(ConfigError, match="sees no CUDA device"):
            pipeline.evaluate_adapter(misconfigured, public_id, now_fn=api.utcnow)
    finally:
        misconfigured.close()
    assert api.request_show(ctx, public_id)["status"] == "evaluating"
    auto = api.open_context(replace(ctx.settings, device="auto"))
    try:
        assert pipeline.evaluate_adapter(auto, public_id, now_fn=api.utcnow) is not None
    finally:
        auto.close()
    assert api.request_show(ctx, public_id)["status"] != "evaluating"

