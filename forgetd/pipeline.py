"""The forgetting pipeline (DESIGN 5, 8-11): approved → scheduled → training → evaluating →
awaiting_compose → composing → verifying → completed.

Each stage is a short database transaction to claim work, the heavy computation outside any
transaction, and a second transaction that publishes the content-addressed result together with the
state moves and audit events. Publishing is idempotent (adapter sha256, checkpoint content id), so a
stage that is retried after a crash cannot duplicate an effect. The stages run as jobs
(forgetd.jobs): `forgetd tick` through the inline executor, `forgetd serve` through local or Ray
workers; a job hands the stage a fenced context, so every transaction here also proves the job's lease.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from forgetd import audit, lifecycle, serving
from forgetd.db.models import (
    Adapter,
    AdapterRequest,
    Checkpoint,
    CheckpointCoverage,
    Evaluation,
    Model,
    Request,
)
from forgetd.errors import ConfigError, DomainError, ForgetdError, IntegrityFailure
from forgetd.explain.records import erase_for_request as erase_explanations
from forgetd.lifecycle import RequestStatus as St

Progress = Callable[[dict[str, Any]], None]
ADAPTER_META = "forgetd_adapter.json"
STEP_KEY = "retain_acc_min_ratio_step"  # policy threshold judged on the adapter against its start checkpoint
COMPOSED_ADAPTER_DIR = "composed_adapter"


# --- shared helpers ----------------------------------------------------------------------------------


def _policy(ctx, name: str):
    from forgetd.policies import get_policy

    return get_policy(ctx.settings.policies_dir, name)


def _payload(ctx, request: Request) -> dict[str, Any]:
    from forgetd.privacy import open_payload

    return json.loads(open_payload(ctx.keyring, request.wrapped_dek, request.payload_ct, aad=request.public_id.encode()))


def _dataset(ctx, model: Model):
    from forgetd.datasets import load_dataset_file

    if model.dataset_sha256 is None:
        return None
    return load_dataset_file(ctx.store.open_dir("dataset", model.dataset_sha256) / "dataset.json")


def checkpoint_dir(ctx, checkpoint: Checkpoint) -> Path:
    """The checkpoint's weights on disk, integrity-checked (the base against its registered hash)."""
    from forgetd.families import family_module

    if checkpoint.version == 0:
        path = Path(checkpoint.uri)
        family_module(checkpoint.model.family).check_weights(path, checkpoint.model.base_sha256)
        return path
    return ctx.store.open_dir("checkpoint", checkpoint.uri.rsplit("/", 1)[-1])


def _forget_data(ctx, s, model: Model, requests: list[Request], *, keep_forgotten: bool = False):
    """Forget data for `requests`; retain data excludes every record any open or completed request of
    the model is forgetting (completed ones included: their data must not be trained back in). With
    `keep_forgotten` (training), families that support it also carry the completed requests' forget data."""
    from forgetd.families import family_module

    family = family_module(model.family)
    dataset = _dataset(ctx, model)
    others = s.execute(
        select(Request).where(
            Request.model_id == model.id,
            Request.status.not_in([St.denied, St.canceled, St.duplicate]),
            Request.wrapped_dek.is_not(None),
        )
    ).scalars()
    # record ids (data requests), class labels (class requests) and concepts already being forgotten
    excluded: set = set()
    honoured = []  # completed requests: the served checkpoint already forgets them
    for r in others:
        payload = _payload(ctx, r)
        if r.status is St.completed:
            honoured.append(payload)
        excluded |= set(payload.get("corpus_ids", []))
        excluded |= {int(label) for label in payload.get("labels", []) if str(label).lstrip("-").isdigit()}
        if payload.get("concept"):
            excluded.add(payload["concept"])
    data = family.forget_data(dataset, [_payload(ctx, r) for r in requests], exclude_from_retain=excluded)
    with_forgotten = getattr(family, "with_forgotten", None)
    return with_forgotten(data, dataset, honoured) if with_forgotten and keep_forgotten else data


def _composition(family):
    """How a family's adapters are loaded and composed: its own functions where it has them (diffusers LoRA
    on a text-to-image UNet), else forgetd.compose's peft ones. Same signatures, same exactness rules."""
    from types import SimpleNamespace

    from forgetd import compose

    names = ("load_with_adapters", "build_merged_dir", "build_cat_adapter")
    return SimpleNamespace(**{n: getattr(family, n, None) or getattr(compose, n) for n in names})


def _fail(s, request: Request, *, reason_code: str, reason: str, now, actor: str) -> None:
    lifecycle.move(s, request, St.failed, actor=actor, now=now, policy=None, reason_code=reason_code, reason=reason)


def _error_text(exc: BaseException) -> str:
    # Operator-facing errors are written to be safe; anything else is reported by class only.
    from forgetd.safe_traceback import describe

    return describe(exc)


def _lock_request(s, public_id: str) -> Request:
    return s.execute(select(Request).where(Request.public_id == public_id).with_for_update(of=Request)).scalar_one()


# --- stage 1: schedule -----------------------------------------------------------------------------


def schedule(ctx, *, now) -> list[str]:
    """Approved requests are scheduled earliest deadline first."""
    moved = []
    with ctx.session() as s:
        approved = s.execute(
            select(Request)
            .where(Request.status == St.approved)
            .order_by(func.coalesce(Request.extended_due_at, Request.due_at), Request.id)
            .with_for_update(of=Request)
        ).scalars().all()
        for request in approved:
            lifecycle.move(s, request, St.scheduled, actor="system:scheduler", now=now, policy=None, reason_code="scheduled")
            moved.append(request.public_id)
    return moved


# --- stage 2: train --------------------------------------------------------------------------------


def _adapters_already_trained(s, request_ids: list[int]) -> int:
    """The most adapters any of these requests already had trained for it (each one refused, or the request
    would not be training again)."""
    counts = s.execute(
        select(func.count(AdapterRequest.adapter_id)).where(AdapterRequest.request_id.in_(request_ids))
        .group_by(AdapterRequest.request_id)
    ).scalars().all()
    return max(counts, default=0)


def train(ctx, public_ids: list[str], *, now_fn, progress: Progress | None = None, resume: bool = False) -> str | None:
    """Train one adapter that forgets a batch of one model's scheduled requests (same recipe), against
    the served checkpoint; returns the adapter sha256. With `resume`, requests already `training` are
    taken too: the job that owned them died and is being retried.

    A ForgetdError (diverged training, a bad recipe) fails the requests: retrying cannot help. Any other
    exception, and errors.Unavailable (a model file gone for now), propagates with the requests left
    `training`, for the job layer to retry."""
    from forgetd.families import family_module
    from forgetd.training.registry import get_recipe

    device = resolve_device(ctx.settings.device)  # before any state changes: a misconfigured worker changes nothing
    with ctx.session() as s:
        requests = [_lock_request(s, pid) for pid in public_ids]
        startable = (St.scheduled, St.training) if resume else (St.scheduled,)
        requests = [r for r in requests if r.status in startable]
        if not requests:
            return None
        public_ids = [r.public_id for r in requests]
        model = requests[0].model
        if any(r.model_id != model.id for r in requests):
            raise ValueError("one adapter forgets requests of one model only")
        recipe_names = {_policy(ctx, r.policy).recipes.get(model.family) for r in requests}
        against = serving.served_checkpoint(s, model)
        earlier_adapters = _adapters_already_trained(s, [r.id for r in requests])
        for request in requests:
            if request.status is St.scheduled:
                lifecycle.move(s, request, St.training, actor="system:trainer", now=now_fn(), policy=None,
                               reason_code="training")
    try:
        if None in recipe_names:
            raise DomainError(f"a request's policy names no recipe for family {model.family}", field="recipes")
        if len(recipe_names) != 1:
            raise DomainError("requests trained together must share a recipe", field="recipes")
        recipe_name = recipe_names.pop()
        recipe = get_recipe(ctx.settings.adapters_dir, recipe_name)
        if earlier_adapters:
            # Retried by an operator after its adapter was refused: the same seed against the same checkpoint
            # would rebuild the same refused adapter byte for byte. A job retried after a crash has stored no
            # adapter yet, so it keeps its seed and stores the same bytes.
            recipe = get_recipe(ctx.settings.adapters_dir, recipe_name, seed=recipe.train.seed + earlier_adapters)
        if not recipe.composable:
            raise DomainError(f"recipe {recipe.name} does not produce an adapter and cannot be composed", field="recipe")
        family = family_module(model.family)
        with ctx.session() as s:
            requests = [_lock_request(s, pid) for pid in public_ids]
            data = _forget_data(ctx, s, model, requests, keep_forgotten=recipe.train.keep_forgotten_weight > 0)
            against = s.get(Checkpoint, against.id)
            weights_dir = checkpoint_dir(ctx, against)
            against_ref = {"model": model.name, "version": against.version, "content_id": against.content_id}
        loaded, tokenizer = family.load_model(weights_dir), family.load_tokenizer(weights_dir)
        extra = {}
        if recipe.train.retain_anchor == "base" and against_ref["version"] != 0:
            extra["anchor"] = _load_base(ctx, model)[0].eval()
        loaded = _placed(model.family, loaded, device)  # the causal-LM recipes train wherever the model lives
        if "anchor" in extra:
            extra["anchor"] = _placed(model.family, extra["anchor"], device)
        staging = Path(tempfile.mkdtemp(prefix="adapter-", dir=ctx.settings.home))
        try:
            out = staging / "adapter"
            if progress:
                progress({"stage": "train", "phase": "start", "recipe": recipe.name})
            result = recipe.module().train(recipe, model=loaded, tokenizer=tokenizer, data=data,
                                           out_dir=out, progress=progress, **extra)
            (out / ADAPTER_META).write_text(
                json.dumps(
                    {
                        "requests": public_ids,
                        "recipe": recipe.name,
                        "recipe_spec": recipe.model_dump(mode="json"),
                        "trained_against": against_ref,
                        # wall-clock time stays out: a retried job must store the same bytes (same sha256)
                        "train": {k: v for k, v in result.items() if k not in ("history", "seconds")},
                    },
                    indent=2,
                    sort_keys=True,
                )
            )
            sha = ctx.store.put_dir("adapter", out, move=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except ForgetdError as exc:
        if exc.retryable:
            raise  # errors.Unavailable: the job retries it; its message fails the requests when attempts run out
        with ctx.session() as s:
            for pid in public_ids:
                request = _lock_request(s, pid)
                if request.status is St.training:
                    _fail(s, request, reason_code="training_failed", reason=_error_text(exc), now=now_fn(),
                          actor="system:trainer")
        return None

    with ctx.session() as s:
        requests = [r for r in (_lock_request(s, pid) for pid in public_ids) if r.status is St.training]
        if not requests:
            return None  # all canceled meanwhile: the stored adapter is referenced nowhere
        adapter = s.execute(select(Adapter).where(Adapter.sha256 == sha)).scalar_one_or_none()
        now = now_fn()
        if adapter is None:
            adapter = Adapter(
                model_id=model.id,
                recipe=recipe.name,
                trained_against_id=against.id,
                sha256=sha,
                uri=ctx.store.uri("adapter", sha),
                rank=recipe.adapter.r,
                target_modules=[recipe.adapter.target],
                metrics={k: v for k, v in result.items() if k != "history"},
                status="trained",
                created_at=now,
            )
            s.add(adapter)
            s.flush()
        linked = set(s.execute(select(AdapterRequest.request_id).where(AdapterRequest.adapter_id == adapter.id)).scalars())
        for request in requests:
            if request.id not in linked:
                s.add(AdapterRequest(adapter_id=adapter.id, request_id=request.id))
            serving.add_edge(s, ("adapter", sha), "trained_for", ("request", request.public_id), now=now)
        serving.add_edge(s, ("adapter", sha), "trained_against", ("checkpoint", f"{model.name}@v{against_ref['version']}"), now=now)
        for request in requests:
            audit.append(s, actor="system:trainer", action="adapter.trained", resource_type="request",
                         resource_id=request.public_id,
                         payload={"adapter_sha256": sha, "recipe": recipe.name, "steps": result["steps"],
                                  "stop_reason": result["stop_reason"], "batch": len(requests),
                                  "trained_against_version": against_ref["version"]},
                         at=now)
            lifecycle.move(s, request, St.evaluating, actor="system:trainer", now=now, policy=None, reason_code="trained")
    return sha


# --- stage 3: evaluate the adapter alone ---------------------------------------------------------------


def _record_checks(s, *, target_kind: str, target_id: int, request: Request | None, metrics, checks, now,
                   evidence_uri: str | None) -> None:
    for name, value in sorted(metrics.items()):
        if isinstance(value, (int, float)):
            s.add(Evaluation(target_kind=target_kind, target_id=target_id, request_id=request.id if request else None,
                             metric=name, value=float(value), threshold=None, passed=None,
                             evidence_uri=evidence_uri, created_at=now))
    for check in checks:
        s.add(Evaluation(target_kind=target_kind, target_id=target_id, request_id=request.id if request else None,
                         metric=f"check:{check.metric}", value=float(check.value), threshold=check.threshold,
                         passed=check.passed, evidence_uri=evidence_uri, created_at=now))


def _store_evidence(ctx, payload: dict[str, Any]) -> str:
    with tempfile.TemporaryDirectory(dir=ctx.settings.home) as tmp:
        (Path(tmp) / "evidence.json").write_text(json.dumps(payload, indent=2, sort_keys=True, default=str))
        return ctx.store.uri("evidence", ctx.store.put_dir("evidence", Path(tmp)))


def load_evidence(ctx, uri: str) -> dict[str, Any]:
    """What `_store_evidence` stored under `uri` (an evaluation's evidence_uri), re-hashed on the read."""
    return json.loads((ctx.store.open_dir("evidence", uri.rsplit("/", 1)[-1]) / "evidence.json").read_text())


def _placed_pair(family: str, loaded: tuple[Any, Any], device: str) -> tuple[Any, Any]:
    return _placed(family, loaded[0], device), loaded[1]


def _placed(family: str, model, device: str):
    """`model` on `device` if it is a causal LM (they train and are evaluated there); else as it is."""
    return model.to(device) if family == "causal_lm" and device != "cpu" else model


def resolve_device(setting: str) -> str:
    """The torch device causal-LM models train and are evaluated on, from the `device` setting; refuses a
    CUDA device this process cannot see."""
    if setting == "cpu":
        return "cpu"
    import torch

    if not torch.cuda.is_available():
        if setting == "auto":
            return "cpu"
        raise ConfigError(
            f"{setting} is set but this worker sees no CUDA device (CUDA_VISIBLE_DEVICES, driver); "
            "set it to cpu or auto, or run the worker where a GPU is visible",
            field="FORGETD_DEVICE",
        )
    if setting == "auto":
        return "cuda"
    index = int(setting.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(
            f"{setting} is set but this worker sees {torch.cuda.device_count()} CUDA device(s)",
            field="FORGETD_DEVICE",
        )
    return setting


def _load_base(ctx, model: Model):
    """The pristine base (v0) and its tokenizer: what 'retain accuracy stays at X% of the original'
    is measured against."""
    from forgetd.families import family_module

    family = family_module(model.family)
    with ctx.session() as s:
        base = s.execute(select(Checkpoint).where(Checkpoint.model_id == model.id, Checkpoint.version == 0)).scalar_one()
        base_dir = checkpoint_dir(ctx, base)
    return family.load_model(base_dir), family.load_tokenizer(base_dir)


def _base_content_id(ctx, model: Model) -> str:
    with ctx.session() as s:
        return s.execute(select(Checkpoint.content_id).where(Checkpoint.model_id == model.id,
                                                             Checkpoint.version == 0)).scalar_one()


# A checkpoint's metrics on a request's evaluation data are a pure function of (checkpoint content, data):
# the generation seeds and the reference sets are in the data. The original's are needed for every
# request on every candidate (sustainability), so they are kept in this process's memory, never on disk
# (the key is derived from the forget data). Bounded: a daemon serving many models must not grow.
_METRICS_MEMO: "dict[tuple[str, str], dict[str, Any]]" = {}
_METRICS_MEMO_MAX = 256


def _data_digest(data) -> str | None:
    import hashlib
    import pickle

    try:
        return hashlib.sha256(pickle.dumps(data, protocol=4)).hexdigest()
    except Exception:  # data that does not pickle is simply not memoised
        return None


def checkpoint_metrics(family, content_id: str, load: Callable[[], tuple[Any, Any]], data) -> dict[str, Any]:
    """family.evaluate(model, tokenizer, data) for the checkpoint `content_id`, loaded by `load()` only
    when this process has not measured it on the same data yet."""
    digest = _data_digest(data)
    key = (content_id, digest) if digest is not None else None
    if key is not None and key in _METRICS_MEMO:
        return copy.deepcopy(_METRICS_MEMO[key])  # a copy the caller may change
    metrics = family.evaluate(*load(), data)
    if key is not None:
        if len(_METRICS_MEMO) >= _METRICS_MEMO_MAX:
            _METRICS_MEMO.pop(next(iter(_METRICS_MEMO)))
        _METRICS_MEMO[key] = copy.deepcopy(metrics)
    return metrics


def evaluate_adapter(ctx, public_id: str, *, now_fn) -> bool | None:
    """Serve-time view of one adapter: the checkpoint it was trained against plus the adapter."""
    from forgetd.families import family_module
    from forgetd.verify.checks import failing

    device = resolve_device(ctx.settings.device)
    with ctx.session() as s:
        request = _lock_request(s, public_id)
        if request.status is not St.evaluating:
            return None
        adapter = s.execute(
            select(Adapter).join(AdapterRequest, AdapterRequest.adapter_id == Adapter.id)
            .where(AdapterRequest.request_id == request.id).order_by(Adapter.id.desc()).limit(1)
        ).scalar_one()
        model = request.model
        policy = _policy(ctx, request.policy)
        against = s.get(Checkpoint, adapter.trained_against_id)
        against_version, against_content_id = against.version, against.content_id
        data = _forget_data(ctx, s, model, [request]).verification_half()
        adapter_id, adapter_sha = adapter.id, adapter.sha256
        try:
            weights_dir = checkpoint_dir(ctx, against)
            adapter_dir = ctx.store.open_dir("adapter", adapter_sha)
        except IntegrityFailure as exc:
            _fail(s, request, reason_code="integrity", reason=str(exc), now=now_fn(), actor="system:evaluator")
            return False
    family = family_module(model.family)
    tokenizer = family.load_tokenizer(weights_dir)
    original = checkpoint_metrics(family, _base_content_id(ctx, model),
                                  lambda: _placed_pair(model.family, _load_base(ctx, model), device), data)
    with_adapters = _placed(model.family, _composition(family).load_with_adapters(
        lambda: family.load_model(weights_dir), [adapter_dir]), device)
    metrics = family.evaluate(with_adapters, tokenizer, data,
                              original=original)
    thresholds = policy.verification.thresholds()
    step_min = thresholds.pop(STEP_KEY, None)
    checks = family.checks(metrics, original, thresholds)
    start = original
    if step_min is not None:
        # What this adapter alone costs: retain against the checkpoint it was trained on (the pristine
        # base for the first one), so continual forgetting is bounded per request and, through
        # `retain_acc_min_ratio`, overall.
        if against_version != 0:
            start = checkpoint_metrics(family, against_content_id,
                                       lambda: (_placed(model.family, family.load_model(weights_dir), device), tokenizer),
                                       data)
        checks += [replace(c, metric=c.metric + "_step")
                   for c in family.checks(metrics, start, {"retain_acc_min_ratio": step_min})]
    evidence = _store_evidence(ctx, {"request": public_id, "adapter": adapter_sha, "metrics": metrics,
                                     "original": original, "start": start, "checks": [c.__dict__ for c in checks]})
    with ctx.session() as s:
        request = _lock_request(s, public_id)
        now = now_fn()
        _record_checks(s, target_kind="adapter", target_id=adapter_id, request=request, metrics=metrics, checks=checks,
                       now=now, evidence_uri=evidence)
        bad = failing(checks)
        if bad:
            s.get(Adapter, adapter_id).status = "rejected"
            _fail(s, request, reason_code="adapter_verification_failed",
                  reason="adapter failed verification: " + "; ".join(c.describe() for c in bad), now=now,
                  actor="system:evaluator")
            return False
        row = s.get(Adapter, adapter_id)
        if row.status == "rejected" and not _failed_by_another(s, adapter_id, request.id):
            # rejected by this request's earlier evaluation, verified now (`request retry` from evaluate, e.g.
            # after a policy or a check was fixed): left rejected, the composer failed the request at once,
            # blaming another request
            row.status = "trained"
        lifecycle.move(s, request, St.awaiting_compose, actor="system:evaluator", now=now, policy=None,
                       reason_code="adapter_verified")
        return True


def _failed_by_another(s, adapter_id: int, request_id: int) -> bool:
    """Whether a request sharing the adapter failed its latest verification of it."""
    rows = s.execute(select(Evaluation.request_id, Evaluation.created_at, Evaluation.passed).where(
        Evaluation.target_kind == "adapter", Evaluation.target_id == adapter_id,
        Evaluation.request_id != request_id)).all()
    latest: dict[int, tuple[Any, list]] = {}
    for rid, at, passed in rows:
        if rid not in latest or at > latest[rid][0]:
            latest[rid] = (at, [passed])
        elif at == latest[rid][0]:
            latest[rid][1].append(passed)
    return any(False in passes for _, passes in latest.values())


# --- stage 4: compose a candidate checkpoint -----------------------------------------------------------


def _composable_adapter(s, request: Request) -> Adapter | None:
    """The newest adapter trained for `request` that may be composed (None when it was rejected)."""
    return s.execute(
        select(Adapter).join(AdapterRequest, AdapterRequest.adapter_id == Adapter.id)
        .where(AdapterRequest.request_id == request.id, Adapter.status.in_(["trained", "composed"]))
        .order_by(Adapter.id.desc()).limit(1)
    ).scalar_one_or_none()


def compose(ctx, model_name: str, *, now_fn, max_batch: int = 16, resume: bool = False) -> str | None:
    """Build the candidate: served manifest + the adapters of every request awaiting composition. With
    `resume`, requests already `composing` (their job died mid-build) are taken too."""
    from forgetd.compose import ManifestEntry, content_id, library_versions
    from forgetd.families import family_module

    with ctx.session() as s:
        model = s.execute(select(Model).where(Model.name == model_name)).scalar_one()
        takeable = [St.awaiting_compose, St.composing] if resume else [St.awaiting_compose]
        waiting = s.execute(
            select(Request).where(Request.model_id == model.id, Request.status.in_(takeable))
            .order_by(func.coalesce(Request.extended_due_at, Request.due_at), Request.id).limit(max_batch)
        ).scalars().all()
        if not waiting:
            return None
        served = serving.served_checkpoint(s, model)
        pairs = []
        # An adapter trained for a batch is rejected when any request in it fails verification; the batch's
        # other requests may already have passed theirs, and must not be composed with it.
        rejected: list[str] = []
        for request in waiting:
            adapter = _composable_adapter(s, request)
            if adapter is None:
                rejected.append(request.public_id)
            else:
                pairs.append((request.public_id, adapter.sha256))
        parent_manifest = [ManifestEntry(e["sha256"], e["weight"]) for e in served.manifest.get("adapters", [])]
        parent_id, parent_coverage = served.id, serving.coverage_ids(s, served.id)
        base = s.execute(select(Checkpoint).where(Checkpoint.model_id == model.id, Checkpoint.version == 0)).scalar_one()
        base_dir = checkpoint_dir(ctx, base)

    # Every adapter is re-hashed before anything is built: a corrupt one fails its request, no candidate.
    corrupt: dict[str, str] = {}
    adapter_dirs: dict[str, Path] = {}
    for entry in parent_manifest:
        adapter_dirs[entry.sha256] = ctx.store.open_dir("adapter", entry.sha256)
    for public_id, sha in pairs:
        try:
            adapter_dirs[sha] = ctx.store.open_dir("adapter", sha)
        except IntegrityFailure as exc:
            corrupt[public_id] = str(exc)
    with ctx.session() as s:
        now = now_fn()
        for public_id in rejected:
            request = _lock_request(s, public_id)
            if request.status in takeable:
                _fail(s, request, reason_code="adapter_rejected", now=now, actor="system:composer",
                      reason="its adapter was rejected at a verification (this request's, or that of a request "
                             "sharing it); verify it again (forgetd request retry ID --from evaluate) or train a "
                             "new one (--from train)")
        good = []
        for public_id, sha in pairs:
            request = _lock_request(s, public_id)
            if request.status not in takeable:
                continue
            if public_id in corrupt:
                _fail(s, request, reason_code="integrity", reason=corrupt[public_id], now=now, actor="system:composer")
                continue
            if request.status is St.awaiting_compose:
                lifecycle.move(s, request, St.composing, actor="system:composer", now=now, policy=None, reason_code="composing")
            good.append((public_id, sha))
    if not good:
        return None

    new_shas = list(dict.fromkeys(sha for _, sha in good))  # one adapter may carry several requests
    parent_shas = {e.sha256 for e in parent_manifest}
    manifest = parent_manifest + [ManifestEntry(sha, 1.0) for sha in new_shas if sha not in parent_shas]
    family = family_module(model.family)
    versions = library_versions(model.family)
    cid = content_id(model.base_sha256, manifest, dtype="float32", versions=versions)
    with ctx.session() as s:
        existing = s.execute(
            select(Checkpoint).where(Checkpoint.model_id == model.id, Checkpoint.content_id == cid)
        ).scalar_one_or_none()
        existing_uri = existing.uri if existing else None
    if existing_uri is None:
        staging = Path(tempfile.mkdtemp(prefix="checkpoint-", dir=ctx.settings.home))
        try:
            dirs = [adapter_dirs[e.sha256] for e in manifest]
            weights = [e.weight for e in manifest]
            composition = _composition(family)
            out = composition.build_merged_dir(lambda: family.load_model(base_dir), base_dir, dirs, weights,
                                               staging / "ckpt")
            composition.build_cat_adapter(lambda: family.load_model(base_dir), dirs, weights, out / COMPOSED_ADAPTER_DIR)
            digest = ctx.store.put_dir("checkpoint", out, move=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        uri = ctx.store.uri("checkpoint", digest)
    else:
        uri = existing_uri

    with ctx.session() as s:
        now = now_fn()
        model = s.execute(select(Model).where(Model.name == model_name)).scalar_one()
        checkpoint = s.execute(
            select(Checkpoint).where(Checkpoint.model_id == model.id, Checkpoint.content_id == cid)
        ).scalar_one_or_none()
        if checkpoint is None:
            version = (s.execute(select(func.max(Checkpoint.version)).where(Checkpoint.model_id == model.id)).scalar() or 0) + 1
            checkpoint = Checkpoint(
                model=model, version=version, parent_id=parent_id,
                manifest={"adapters": [e.to_dict() for e in manifest], "method": "fp32-delta-sum-v1",
                          "dtype": "float32", "versions": versions},
                content_id=cid, uri=uri, status="candidate", created_at=now,
            )
            s.add(checkpoint)
            s.flush()
        elif checkpoint.status == "rejected":
            checkpoint.status = "candidate"
            checkpoint.status_reason = None
        covered = parent_coverage | {_lock_request(s, pid).id for pid, _ in good}
        already = serving.coverage_ids(s, checkpoint.id)
        for request_id in sorted(covered - already):
            s.add(CheckpointCoverage(checkpoint_id=checkpoint.id, request_id=request_id))
        ref = serving.checkpoint_ref(checkpoint)
        for sha in new_shas:
            serving.add_edge(s, ("adapter", sha), "composed_into", ref, now=now)
        parent = s.get(Checkpoint, parent_id)
        serving.add_edge(s, ref, "supersedes", serving.checkpoint_ref(parent), now=now)
        audit.append(s, actor="system:composer", action="checkpoint.built", resource_type="model", resource_id=model.name,
                     payload={"version": checkpoint.version, "content_id": cid, "adapters": len(manifest),
                              "parent_version": parent.version, "requests": [pid for pid, _ in good]}, at=now)
        for public_id, _ in good:
            request = _lock_request(s, public_id)
            lifecycle.move(s, request, St.verifying, actor="system:composer", now=now, policy=None,
                           reason_code="composed")
        return f"{model.name}@v{checkpoint.version}"


# --- stage 5: verify the candidate against every active request, then promote ---------------------------


def verify_and_promote(ctx, model_name: str, *, now_fn) -> list[str]:
    """Verify the newest candidate against all requests it carries (sustainability: earlier requests must
    stay forgotten) with each request's policy; promote it only if every check passes."""
    from forgetd.families import family_module
    from forgetd.verify.checks import failing

    device = resolve_device(ctx.settings.device)
    with ctx.session() as s:
        model = s.execute(select(Model).where(Model.name == model_name)).scalar_one()
        verifying = s.execute(
            select(Request).where(Request.model_id == model.id, Request.status == St.verifying)
        ).scalars().all()
        if not verifying:
            return []
        candidate = s.execute(
            select(Checkpoint).where(Checkpoint.model_id == model.id, Checkpoint.status == "candidate")
            .order_by(Checkpoint.version.desc()).limit(1)
        ).scalar_one()
        covered_ids = serving.coverage_ids(s, candidate.id)
        covered = s.execute(select(Request).where(Request.id.in_(covered_ids)).order_by(Request.id)).scalars().all()
        targets = [(r.public_id, _policy(ctx, r.policy), _forget_data(ctx, s, model, [r]).verification_half())
                   for r in covered if r.wrapped_dek is not None]
        candidate_id = candidate.id
        weights_dir = checkpoint_dir(ctx, candidate)
        verifying_ids = [r.public_id for r in verifying]
    family = family_module(model.family)
    merged, tokenizer = _placed(model.family, family.load_model(weights_dir), device), family.load_tokenizer(weights_dir)
    base_id, base = _base_content_id(ctx, model), []

    def load_base():  # once for all targets, and only if one is not memoised
        if not base:
            base.append(_placed_pair(model.family, _load_base(ctx, model), device))
        return base[0]

    results = []
    for public_id, policy, data in targets:
        original = checkpoint_metrics(family, base_id, load_base, data)
        metrics = family.evaluate(merged, tokenizer, data, original=original)
        checks = family.checks(metrics, original, policy.verification.thresholds())
        results.append((public_id, metrics, original, checks))
    evidence = _store_evidence(ctx, {"checkpoint": candidate_id, "results": [
        {"request": pid, "metrics": m, "original": o, "checks": [c.__dict__ for c in cs]} for pid, m, o, cs in results]})
    bad = {pid: failing(cs) for pid, _, _, cs in results if failing(cs)}

    with ctx.session() as s:
        now = now_fn()
        model = s.execute(select(Model).where(Model.name == model_name)).scalar_one()
        candidate = s.get(Checkpoint, candidate_id)
        for public_id, metrics, _, checks in results:
            _record_checks(s, target_kind="checkpoint", target_id=candidate_id, request=_lock_request(s, public_id),
                           metrics=metrics, checks=checks, now=now, evidence_uri=evidence)
        if bad:
            summary = "; ".join(f"{pid}: " + ", ".join(c.describe() for c in cs) for pid, cs in bad.items())
            candidate.status = "rejected"
            candidate.status_reason = summary[:2000]
            audit.append(s, actor="system:verifier", action="checkpoint.rejected", resource_type="model",
                         resource_id=model.name, payload={"version": candidate.version,
                                                          "failing": {p: [c.metric for c in cs] for p, cs in bad.items()}},
                         at=now)
            for public_id in verifying_ids:
                request = _lock_request(s, public_id)
                reason = ("candidate v%d failed verification: %s" % (candidate.version, summary))[:2000]
                _fail(s, request, reason_code="checkpoint_verification_failed", reason=reason, now=now,
                      actor="system:verifier")
            return []
        erased = 0
        for public_id in verifying_ids:
            request = _lock_request(s, public_id)
            lifecycle.move(s, request, St.completed, actor="system:verifier", now=now, policy=None, reason_code="verified")
            erased += erase_explanations(s, request, now=now, actor="system:verifier")
            serving.add_edge(s, serving.checkpoint_ref(candidate), "fulfils", ("request", public_id), now=now)
        for entry in candidate.manifest.get("adapters", []):
            adapter = s.execute(select(Adapter).where(Adapter.sha256 == entry["sha256"])).scalar_one_or_none()
            if adapter is not None and adapter.status == "trained":
                adapter.status = "composed"
        serving.move_alias(s, model, candidate, actor="system:verifier", reason_code="verified", now=now)
    if erased:
        from forgetd.db.engine import compact_sqlite_wal

        compact_sqlite_wal(ctx.engine)  # the erased records' keys must not survive in the WAL
    return verifying_ids
