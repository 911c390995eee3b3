"""The forgetting pipeline (DESIGN 5, 8-11): approved → scheduled → training → evaluating →
awaiting_compose → composing → verifying → completed.

Each stage is a short database transaction to claim work, the heavy computation outside any
transaction, and a second transaction that publishes the content-addressed result together with the
state moves and audit events. Publishing is idempotent (adapter sha256, checkpoint content id), so a
stage that is retried after a crash cannot duplicate an effect. `run_until_idle` is what `forgetd tick`
calls; the background service (issue 4) drives the same stage functions as jobs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
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
from forgetd.errors import DomainError, ForgetdError, IntegrityFailure
from forgetd.lifecycle import RequestStatus as St

Progress = Callable[[dict[str, Any]], None]
ADAPTER_META = "forgetd_adapter.json"
COMPOSED_ADAPTER_DIR = "composed_adapter"


@dataclass
class TickReport:
    scheduled: list[str] = field(default_factory=list)
    trained: list[str] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)
    candidates: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return self.__dict__.copy()

    @property
    def idle(self) -> bool:
        return not (self.scheduled or self.trained or self.evaluated or self.candidates or self.completed or self.failed)


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
    from forgetd.families.causal_lm import check_weights

    if checkpoint.version == 0:
        path = Path(checkpoint.uri)
        check_weights(path, checkpoint.model.base_sha256)
        return path
    return ctx.store.open_dir("checkpoint", checkpoint.uri.rsplit("/", 1)[-1])


def _forget_data(ctx, s, model: Model, requests: list[Request]):
    """Forget data for `requests`; retain data excludes every record any open or completed request of
    the model is forgetting (completed ones included: their data must not be trained back in)."""
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
    excluded = {i for r in others for i in _payload(ctx, r).get("corpus_ids", [])}
    return family.forget_data(dataset, [_payload(ctx, r) for r in requests], exclude_from_retain=excluded)


def _fail(s, request: Request, *, reason_code: str, reason: str, now, actor: str) -> None:
    lifecycle.move(s, request, St.failed, actor=actor, now=now, policy=None, reason_code=reason_code, reason=reason)


def _error_text(exc: BaseException) -> str:
    # Operator-facing errors are written to be safe; anything else is reported by class only.
    return str(exc) if isinstance(exc, ForgetdError) else type(exc).__name__


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


def train(ctx, public_ids: list[str], *, now_fn, progress: Progress | None = None) -> str | None:
    """Train one adapter that forgets a batch of one model's scheduled requests (same recipe), against
    the served checkpoint; returns the adapter sha256. Forgetting queued requests together costs the
    model less than composing one adapter per request, each trained blind to the others."""
    from forgetd.families import family_module
    from forgetd.training.registry import get_recipe

    with ctx.session() as s:
        requests = [_lock_request(s, pid) for pid in public_ids]
        requests = [r for r in requests if r.status is St.scheduled]
        if not requests:
            return None
        public_ids = [r.public_id for r in requests]
        model = requests[0].model
        if any(r.model_id != model.id for r in requests):
            raise ValueError("one adapter forgets requests of one model only")
        recipe_names = {_policy(ctx, r.policy).recipes.get(model.family) for r in requests}
        against = serving.served_checkpoint(s, model)
        for request in requests:
            lifecycle.move(s, request, St.training, actor="system:trainer", now=now_fn(), policy=None,
                           reason_code="training")
    try:
        if None in recipe_names:
            raise DomainError(f"a request's policy names no recipe for family {model.family}", field="recipes")
        if len(recipe_names) != 1:
            raise DomainError("requests trained together must share a recipe", field="recipes")
        recipe = get_recipe(ctx.settings.adapters_dir, recipe_names.pop())
        if not recipe.composable:
            raise DomainError(f"recipe {recipe.name} does not produce an adapter and cannot be composed", field="recipe")
        family = family_module(model.family)
        with ctx.session() as s:
            requests = [_lock_request(s, pid) for pid in public_ids]
            data = _forget_data(ctx, s, model, requests)
            against = s.get(Checkpoint, against.id)
            weights_dir = checkpoint_dir(ctx, against)
            against_ref = {"model": model.name, "version": against.version, "content_id": against.content_id}
        loaded, tokenizer = family.load_model(weights_dir), family.load_tokenizer(weights_dir)
        staging = Path(tempfile.mkdtemp(prefix="adapter-", dir=ctx.settings.home))
        try:
            out = staging / "adapter"
            result = recipe.module().train(recipe, model=loaded, tokenizer=tokenizer, data=data,
                                           out_dir=out, progress=progress)
            (out / ADAPTER_META).write_text(
                json.dumps(
                    {
                        "requests": public_ids,
                        "recipe": recipe.name,
                        "recipe_spec": recipe.model_dump(mode="json"),
                        "trained_against": against_ref,
                        "train": {k: v for k, v in result.items() if k != "history"},
                    },
                    indent=2,
                    sort_keys=True,
                )
            )
            sha = ctx.store.put_dir("adapter", out, move=True)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except Exception as exc:
        with ctx.session() as s:
            for pid in public_ids:
                request = _lock_request(s, pid)
                if request.status is St.training:
                    _fail(s, request, reason_code="training_failed", reason=_error_text(exc), now=now_fn(),
                          actor="system:trainer")
        if not isinstance(exc, ForgetdError):
            raise
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


def _load_base(ctx, model: Model):
    """The pristine base (v0) and its tokenizer: what 'retain accuracy stays at X% of the original'
    is measured against."""
    from forgetd.families import family_module

    family = family_module(model.family)
    with ctx.session() as s:
        base = s.execute(select(Checkpoint).where(Checkpoint.model_id == model.id, Checkpoint.version == 0)).scalar_one()
        base_dir = checkpoint_dir(ctx, base)
    return family.load_model(base_dir), family.load_tokenizer(base_dir)


def evaluate_adapter(ctx, public_id: str, *, now_fn) -> bool | None:
    """Serve-time view of one adapter: the checkpoint it was trained against plus the adapter."""
    from forgetd.compose import load_with_adapters
    from forgetd.families import family_module
    from forgetd.verify.causal_lm import evaluate
    from forgetd.verify.checks import CHECKERS, failing

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
    metrics = evaluate(load_with_adapters(lambda: family.load_model(weights_dir), [adapter_dir]), tokenizer, data)
    original = evaluate(*_load_base(ctx, model), data)
    checks = CHECKERS[model.family](metrics, original, policy.verification.thresholds())
    evidence = _store_evidence(ctx, {"request": public_id, "adapter": adapter_sha, "metrics": metrics,
                                     "original": original, "checks": [c.__dict__ for c in checks]})
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
        lifecycle.move(s, request, St.awaiting_compose, actor="system:evaluator", now=now, policy=None,
                       reason_code="adapter_verified")
        return True


# --- stage 4: compose a candidate checkpoint -----------------------------------------------------------


def compose(ctx, model_name: str, *, now_fn, max_batch: int = 16) -> str | None:
    """Build the candidate: served manifest + the adapters of every request awaiting composition."""
    from forgetd.compose import ManifestEntry, build_cat_adapter, build_merged_dir, content_id, library_versions
    from forgetd.families import family_module

    with ctx.session() as s:
        model = s.execute(select(Model).where(Model.name == model_name)).scalar_one()
        waiting = s.execute(
            select(Request).where(Request.model_id == model.id, Request.status == St.awaiting_compose)
            .order_by(func.coalesce(Request.extended_due_at, Request.due_at), Request.id).limit(max_batch)
        ).scalars().all()
        if not waiting:
            return None
        served = serving.served_checkpoint(s, model)
        pairs = []
        for request in waiting:
            adapter = s.execute(
                select(Adapter).join(AdapterRequest, AdapterRequest.adapter_id == Adapter.id)
                .where(AdapterRequest.request_id == request.id, Adapter.status == "trained")
                .order_by(Adapter.id.desc()).limit(1)
            ).scalar_one()
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
        good = []
        for public_id, sha in pairs:
            request = _lock_request(s, public_id)
            if request.status is not St.awaiting_compose:
                continue
            if public_id in corrupt:
                _fail(s, request, reason_code="integrity", reason=corrupt[public_id], now=now, actor="system:composer")
            else:
                lifecycle.move(s, request, St.composing, actor="system:composer", now=now, policy=None, reason_code="composing")
                good.append((public_id, sha))
    if not good:
        return None

    new_shas = list(dict.fromkeys(sha for _, sha in good))  # one adapter may carry several requests
    parent_shas = {e.sha256 for e in parent_manifest}
    manifest = parent_manifest + [ManifestEntry(sha, 1.0) for sha in new_shas if sha not in parent_shas]
    family = family_module(model.family)
    versions = library_versions()
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
            out = build_merged_dir(lambda: family.load_model(base_dir), base_dir, dirs, weights, staging / "ckpt")
            build_cat_adapter(lambda: family.load_model(base_dir), dirs, weights, out / COMPOSED_ADAPTER_DIR)
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
    from forgetd.verify.causal_lm import evaluate
    from forgetd.verify.checks import CHECKERS, failing

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
    merged, tokenizer = family.load_model(weights_dir), family.load_tokenizer(weights_dir)
    base = _load_base(ctx, model)  # once for all targets, not once per request
    results = []
    for public_id, policy, data in targets:
        metrics = evaluate(merged, tokenizer, data)
        original = evaluate(*base, data)
        checks = CHECKERS[model.family](metrics, original, policy.verification.thresholds())
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
        for public_id in verifying_ids:
            request = _lock_request(s, public_id)
            lifecycle.move(s, request, St.completed, actor="system:verifier", now=now, policy=None, reason_code="verified")
            serving.add_edge(s, serving.checkpoint_ref(candidate), "fulfils", ("request", public_id), now=now)
        for entry in candidate.manifest.get("adapters", []):
            adapter = s.execute(select(Adapter).where(Adapter.sha256 == entry["sha256"])).scalar_one_or_none()
            if adapter is not None and adapter.status == "trained":
                adapter.status = "composed"
        serving.move_alias(s, model, candidate, actor="system:verifier", reason_code="verified", now=now)
        return verifying_ids


# --- the whole pipeline, synchronously ---------------------------------------------------------------


def _recipe_batch(ctx, model_id: int, policy_name: str) -> int:
    """How many requests one adapter may forget together (the recipe's `train.batch_requests`)."""
    from forgetd.training.registry import get_recipe

    with ctx.session() as s:
        family = s.get(Model, model_id).family
    recipe_name = _policy(ctx, policy_name).recipes.get(family)
    if recipe_name is None:
        return 1
    return get_recipe(ctx.settings.adapters_dir, recipe_name).train.batch_requests


def run_until_idle(ctx, *, now_fn, progress: Progress | None = None, max_rounds: int = 200) -> TickReport:
    report = TickReport()

    def note(event: dict[str, Any]) -> None:
        if progress:
            progress(event)

    for _ in range(max_rounds):
        round_report = TickReport()
        round_report.scheduled = schedule(ctx, now=now_fn())
        with ctx.session() as s:
            scheduled = s.execute(
                select(Request.public_id, Request.model_id, Request.policy).where(Request.status == St.scheduled)
                .order_by(func.coalesce(Request.extended_due_at, Request.due_at), Request.id)
            ).all()
        # One batch per model per round: the next one is trained against the checkpoint that already
        # carries this one's forgetting (continual), instead of several adapters trained blind to each other.
        batches: dict[int, list[str]] = {}
        batch_policy: dict[int, str] = {}
        for public_id, model_id, policy_name in scheduled:
            if batch_policy.setdefault(model_id, policy_name) != policy_name:
                continue
            batch = batches.setdefault(model_id, [])
            if len(batch) < _recipe_batch(ctx, model_id, policy_name):
                batch.append(public_id)
        for batch in batches.values():
            label = batch[0] if len(batch) == 1 else f"{batch[0]} +{len(batch) - 1}"
            note({"stage": "train", "request": label})
            sha = train(ctx, batch, now_fn=now_fn, progress=lambda e, p=label: note({"stage": "train", "request": p, **e}))
            if sha:
                round_report.trained.extend(batch)
            else:
                round_report.failed.extend({"request": pid, "stage": "train"} for pid in batch)
        with ctx.session() as s:
            to_evaluate = list(s.execute(select(Request.public_id).where(Request.status == St.evaluating)).scalars())
        for public_id in to_evaluate:
            note({"stage": "evaluate", "request": public_id})
            ok = evaluate_adapter(ctx, public_id, now_fn=now_fn)
            (round_report.evaluated.append(public_id) if ok else round_report.failed.append({"request": public_id, "stage": "evaluate"}))
        with ctx.session() as s:
            models = list(s.execute(
                select(Model.name).join(Request, Request.model_id == Model.id)
                .where(Request.status.in_([St.awaiting_compose, St.verifying])).distinct()
            ).scalars())
        for name in models:
            note({"stage": "compose", "model": name})
            candidate = compose(ctx, name, now_fn=now_fn)
            if candidate:
                round_report.candidates.append(candidate)
            note({"stage": "verify", "model": name})
            done = verify_and_promote(ctx, name, now_fn=now_fn)
            round_report.completed += done
        for key in ("scheduled", "trained", "evaluated", "candidates", "completed", "failed"):
            getattr(report, key).extend(getattr(round_report, key))
        if round_report.idle:
            break
    return report
