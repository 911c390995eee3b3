"""The explanation record store (DESIGN 11 and 12): issue, list, show, report, reissue, re-validate, erase.

- A record is personal data (the person's features, the advice given, the attributions): it is sealed
  with its own data key, wrapped by the master key, exactly like a request's payload. Only the explainer
  settings, the robustness parameters, the noise floor and the issued margin are kept in the clear.
- Every state change is one transaction with its audit event; audit payloads and errors carry ids,
  codes and counts only (feature values are never echoed, not even in error messages).
- Re-validation runs as the `revalidate` job that every alias move enqueues: each live record (VALID,
  AT_RISK, INVALIDATED) of the model gets one append-only check row on the newly served checkpoint and
  takes that check's status. One summary audit event `explanation.revalidated` is written per run
  (counts and the ids whose status changed), in the same transaction as the checks.
- When a subject's `data` erasure request completes, their records of that model are ERASED in the same
  transaction: data key and ciphertext destroyed, aggregate counts kept in the `explanation.erased` event.

Heavy imports (torch through the explainers and the model family) stay inside functions.
"""

from __future__ import annotations

import base64
import json
import math
import re
import secrets
from datetime import datetime
from pathlib import Path
from typing import Any

from forgetd.errors import DomainError, InputError, NotFoundError

VALID, AT_RISK, INVALIDATED, REISSUED, ERASED = "VALID", "AT_RISK", "INVALIDATED", "REISSUED", "ERASED"
STATUSES = (VALID, AT_RISK, INVALIDATED, REISSUED, ERASED)
LIVE = (VALID, AT_RISK, INVALIDATED)
KINDS = ("counterfactual", "attribution")
SUPPORTED_FAMILY = "tabular_classifier"
PUBLIC_ID_PATTERN = re.compile(r"^ex_[a-z2-7]{16}$")
_SAFE_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_ISSUE_ATTEMPTS = 3  # recompute when the served checkpoint moved while an explanation was computed


def _now() -> datetime:
    from forgetd.api import utcnow

    return utcnow()


def new_public_id() -> str:
    return "ex_" + base64.b32encode(secrets.token_bytes(10)).decode().lower()


def check_explanation_id(value: Any, *, field: str = "ID") -> str:
    if not isinstance(value, str) or not PUBLIC_ID_PATTERN.match(value):
        raise InputError("explanation ids look like ex_ followed by 16 characters (see `forgetd explain list`)",
                         field=field)
    return value


# --- validation ---------------------------------------------------------------------------------------


def _check_params(kind: Any, robust_k: Any, delta: Any) -> tuple[str, int | None, float | None]:
    if kind not in KINDS:
        raise InputError(f"must be one of {', '.join(KINDS)}", field="--kind")
    if kind == "attribution" and (robust_k is not None or delta is not None):
        raise InputError("deletion robustness applies to counterfactuals only; drop it for attributions",
                         field="--robust-k" if robust_k is not None else "--delta")
    if robust_k is None and delta is not None:
        raise InputError("--delta is the robust margin; give it together with --robust-k", field="--delta")
    if robust_k is not None:
        if isinstance(robust_k, bool) or not isinstance(robust_k, int) or robust_k < 1:
            raise InputError("must be a whole number of training rows, at least 1", field="--robust-k")
        if delta is None:
            raise InputError("a deletion-robust counterfactual needs its margin δ > 0 (e.g. --delta 0.2)",
                             field="--delta")
        if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not math.isfinite(delta) \
                or not 0 < delta <= 100:
            raise InputError("must be a number greater than 0 (logits), at most 100", field="--delta")
        delta = float(delta)
    return kind, robust_k, delta


def read_input_file(path: Any, *, max_bytes: int, field: str = "--input") -> dict[str, Any]:
    """The person's feature values: a JSON object {feature name: number}. Never echoes the content."""
    if path is None or str(path) == "":
        raise InputError("a JSON file of the person's feature values is required", field=field)
    try:
        raw = Path(path).expanduser().read_bytes()
    except OSError:
        raise InputError("file not found or unreadable", field=field) from None
    if len(raw) > max_bytes:
        raise InputError(f"larger than {max_bytes} bytes", field=field)
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError("must be UTF-8 JSON: an object of feature name → number", field=field) from None
    if not isinstance(data, dict) or not data:
        raise InputError("must be a JSON object of feature name → number", field=field)
    return data


def validate_features(data: dict[str, Any], config, *, field: str = "input") -> list[float]:
    """Values in the model's feature order; every feature present, numeric, whole where integral, in range."""
    names = config.feature_names
    for key in data:
        if key not in names:
            where = f"{field}.{key}" if isinstance(key, str) and _SAFE_KEY.match(key) else field
            raise InputError(f"not a feature of this model (expected: {', '.join(names)})", field=where)
    values = []
    for feature in config.features:
        where = f"{field}.{feature.name}"
        if feature.name not in data:
            raise InputError("missing: every feature of the model is needed", field=where)
        value = data[feature.name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InputError("must be a finite number", field=where)
        if feature.kind in ("integer", "binary") and float(value) != round(float(value)):
            raise InputError(f"must be a whole number ({feature.kind} feature)", field=where)
        if not feature.min <= value <= feature.max:
            raise InputError(f"out of range: must be between {feature.min:g} and {feature.max:g}", field=where)
        values.append(float(value))
    return values


# --- loading models --------------------------------------------------------------------------------------


def _served(ctx, s, model_name: str) -> dict[str, Any]:
    """The model and its served checkpoint as plain values (and the weights directory, integrity-checked)."""
    from sqlalchemy import select

    from forgetd import pipeline, serving
    from forgetd.db.models import Model

    if not isinstance(model_name, str) or not model_name:
        raise InputError("a registered model name is required", field="--model")
    model = s.execute(select(Model).where(Model.name == model_name)).scalar_one_or_none()
    if model is None:
        raise InputError("unknown model; see `forgetd model list`", field="--model")
    if model.family != SUPPORTED_FAMILY:
        raise InputError(f"explanations are issued for {SUPPORTED_FAMILY} models only", field="--model")
    checkpoint = serving.served_checkpoint(s, model)
    return {"model": model, "model_id": model.id, "name": model.name, "family": model.family,
            "checkpoint_id": checkpoint.id, "version": checkpoint.version,
            "weights_dir": pipeline.checkpoint_dir(ctx, checkpoint)}


def _training_rows(ctx, s, model):
    """Rows the served model was trained on and may still use: the dataset's retain subjects minus every
    subject an open or completed data request is forgetting (their rows must not shape new advice)."""
    import numpy as np
    from sqlalchemy import select

    from forgetd import pipeline
    from forgetd.db.models import Request
    from forgetd.lifecycle import RequestStatus as St

    dataset = pipeline._dataset(ctx, model)
    if dataset is None:
        raise InputError("deletion-robust recourse needs the model's registered dataset (model register "
                         "--dataset)", field="--robust-k")
    excluded: set[str] = set()
    for r in s.execute(select(Request).where(
        Request.model_id == model.id, Request.status.not_in([St.denied, St.canceled, St.duplicate]),
        Request.wrapped_dek.is_not(None),
    )).scalars():
        excluded |= set(pipeline._payload(ctx, r).get("corpus_ids", []))
    ids = [i for i in dataset.retain if i not in excluded and dataset.records[i].rows]
    rows, labels = dataset.rows_of(ids)
    return np.asarray(rows, dtype=np.float32), np.asarray([int(v) for v in labels], dtype=np.int64)


def _compute(model, x: list[float], kind: str, robust_k: int | None, delta: float | None, train) -> dict[str, Any]:
    from forgetd.explain.attribution import integrated_gradients
    from forgetd.explain.counterfactual import counterfactual, decide, deletion_robust_counterfactual
    from forgetd.families.tabular_classifier import config_of

    if kind == "attribution":
        return integrated_gradients(model, x)
    config = config_of(model)
    decision, _ = decide(model, x)
    if config.favorable_class is not None and decision == config.favorable_class:
        raise DomainError("the served model already decides the favourable class for this input: there is no "
                          "recourse to give (issue an attribution instead)", field="--kind")
    if robust_k is None:
        return counterfactual(model, x)
    X, y = train
    if robust_k > len(X):
        raise InputError(f"at most the number of training rows ({len(X)})", field="--robust-k")
    return deletion_robust_counterfactual(model, x, X, y, k=robust_k, delta=delta)


def _clear_fields(record: dict[str, Any]) -> dict[str, Any]:
    """What is stored in the clear: settings, robustness parameters, noise floor, issued margin."""
    if record["kind"] == "counterfactual":
        settings = {"method": record["method"], **record["settings"]}
        margin = record["margin"]
    else:
        settings = {"method": record["method"], "output": record["output"], "steps": record["steps"],
                    "k": record["k"], "baseline_kind": record["baseline_kind"]}
        margin = record["f_x"]
    return {"settings": settings, "robustness": record.get("robustness"), "noise_floor": record.get("noise_floor"),
            "issued_margin": float(margin) if margin is not None and math.isfinite(margin) else None}


# --- issuing ---------------------------------------------------------------------------------------------


def _issue(ctx, *, model_name: str, subject_ref: str, x: list[float] | None, raw_input: dict | None, kind: str,
           robust_k: int | None, delta: float | None, actor: str, supersedes: str | None = None) -> dict[str, Any]:
    """Compute under the served checkpoint, then store it in one transaction with its audit event and
    lineage edge, provided that checkpoint is still served (recomputed otherwise)."""
    from sqlalchemy import select

    from forgetd import audit, serving
    from forgetd.db.models import Alias, Checkpoint, Explanation, Model
    from forgetd.families import family_module
    from forgetd.families.tabular_classifier import read_config
    from forgetd.privacy import seal_payload

    for _ in range(_ISSUE_ATTEMPTS):
        with ctx.session() as s:
            served = _served(ctx, s, model_name)
            config = read_config(served["weights_dir"])
            if x is None:
                x = validate_features(raw_input, config)
            train = _training_rows(ctx, s, served["model"]) if robust_k is not None else None
        model = family_module(served["family"]).load_model(served["weights_dir"])
        record = _compute(model, x, kind, robust_k, delta, train)
        plaintext = json.dumps(record, allow_nan=False, separators=(",", ":")).encode()
        clear = _clear_fields(record)
        public_id = new_public_id()
        wrapped, ciphertext = seal_payload(ctx.keyring, plaintext, aad=public_id.encode())
        with ctx.session() as s:
            alias = s.execute(select(Alias).where(Alias.model_id == served["model_id"],
                                                  Alias.name == serving.DEFAULT_ALIAS).with_for_update()
                              ).scalar_one_or_none()
            if alias is None or alias.checkpoint_id != served["checkpoint_id"]:
                continue  # the alias moved while we computed: issue under the new checkpoint instead
            now = _now()
            model_row = s.get(Model, served["model_id"])
            checkpoint = s.get(Checkpoint, served["checkpoint_id"])
            old = None
            if supersedes is not None:
                old = s.execute(select(Explanation).where(Explanation.public_id == supersedes)
                                .with_for_update()).scalar_one()
                if old.status not in LIVE:
                    raise DomainError(f"explanation {supersedes} is {old.status}; only live records can be reissued",
                                      field="ID")
            row = Explanation(
                public_id=public_id, model_id=model_row.id, checkpoint_id=checkpoint.id, subject_ref=subject_ref,
                kind=kind, status=VALID, settings=clear["settings"], robustness=clear["robustness"],
                noise_floor=clear["noise_floor"], issued_margin=clear["issued_margin"], payload_ct=ciphertext,
                payload_bytes=len(plaintext), wrapped_dek=wrapped, issued_by=actor, created_at=now, updated_at=now,
            )
            s.add(row)
            s.flush()
            serving.add_edge(s, ("explanation", public_id), "issued_under", serving.checkpoint_ref(checkpoint), now=now)
            payload = {"model": model_row.name, "version": checkpoint.version, "kind": kind,
                       "robust_k": robust_k, "delta": delta}
            if old is not None:
                old.status = REISSUED
                old.reissued_as_id = row.id
                old.updated_at = now
                serving.add_edge(s, ("explanation", public_id), "supersedes", ("explanation", old.public_id), now=now)
                audit.append(s, actor=actor, action="explanation.reissued", resource_type="explanation",
                             resource_id=old.public_id, payload={**payload, "reissued_as": public_id}, at=now)
            audit.append(s, actor=actor, action="explanation.issued", resource_type="explanation",
                         resource_id=public_id, payload={**payload, "supersedes": supersedes}, at=now)
            out = _summary(s, row)
            out["meets_requirement"] = record.get("meets_requirement")
            return out
    raise DomainError("the served checkpoint kept changing while the explanation was computed; try again",
                      field="--model")


def explain_issue(ctx, model: str, subject: str, input_path, kind: str = "counterfactual", *,
                  robust_k: int | None = None, delta: float | None = None) -> dict[str, Any]:
    """Issue an explanation to a person under the served checkpoint; returns its summary (no features)."""
    from forgetd.intake import check_subject

    kind, robust_k, delta = _check_params(kind, robust_k, delta)
    subject_ref = ctx.keyring.subject_ref(check_subject(subject, field="--subject"))
    raw = read_input_file(input_path, max_bytes=ctx.settings.max_payload_bytes)
    actor = ctx.actor
    return _issue(ctx, model_name=model, subject_ref=subject_ref, x=None, raw_input=raw, kind=kind,
                  robust_k=robust_k, delta=delta, actor=actor)


def _open(ctx, row) -> dict[str, Any]:
    from forgetd.privacy import open_payload

    if row.status == ERASED or row.wrapped_dek is None or row.payload_ct is None:
        raise DomainError(f"explanation {row.public_id} was erased with its subject's data; nothing is left to "
                          "show", field="--record")
    return json.loads(open_payload(ctx.keyring, row.wrapped_dek, row.payload_ct, aad=row.public_id.encode()))


def explain_reissue(ctx, public_id: str) -> dict[str, Any]:
    """A new record for the same person and settings under the currently served checkpoint; the old one
    becomes REISSUED and points at it."""
    check_explanation_id(public_id)
    actor = ctx.actor
    with ctx.session() as s:
        row = _get(s, public_id)
        if row.status == REISSUED:
            new = _public_id_of(s, row.reissued_as_id)
            raise DomainError(f"explanation {public_id} was already reissued as {new}", field="ID")
        if row.status == ERASED:
            raise DomainError(f"explanation {public_id} was erased with its subject's data", field="ID")
        record = _open(ctx, row)
        model_name, subject_ref, kind = row.model.name, row.subject_ref, row.kind
        robustness = row.robustness or {}
    return _issue(ctx, model_name=model_name, subject_ref=subject_ref, x=[float(v) for v in record["x"]],
                  raw_input=None, kind=kind, robust_k=robustness.get("k"), delta=robustness.get("delta"),
                  actor=actor, supersedes=public_id)


# --- queries ---------------------------------------------------------------------------------------------


def _get(s, public_id: str):
    from sqlalchemy import select

    from forgetd.db.models import Explanation

    row = s.execute(select(Explanation).where(Explanation.public_id == public_id)).scalar_one_or_none()
    if row is None:
        raise NotFoundError(f"no explanation {public_id}", field="ID")
    return row


def _public_id_of(s, explanation_id: int | None) -> str | None:
    from forgetd.db.models import Explanation

    if explanation_id is None:
        return None
    other = s.get(Explanation, explanation_id)
    return other.public_id if other else None


def _version_of(s, checkpoint_id: int) -> int | None:
    from forgetd.db.models import Checkpoint

    checkpoint = s.get(Checkpoint, checkpoint_id)
    return checkpoint.version if checkpoint else None


def _last_check(s, explanation_id: int):
    from sqlalchemy import select

    from forgetd.db.models import ExplanationCheck

    return s.execute(select(ExplanationCheck).where(ExplanationCheck.explanation_id == explanation_id)
                     .order_by(ExplanationCheck.id.desc()).limit(1)).scalar_one_or_none()


def _summary(s, row) -> dict[str, Any]:
    last = _last_check(s, row.id)
    robustness = row.robustness or {}
    return {
        "id": row.public_id,
        "model": row.model.name,
        "kind": row.kind,
        "robust": bool(robustness),
        "robust_k": robustness.get("k"),
        "delta": robustness.get("delta"),
        "status": row.status,
        "issued_under": _version_of(s, row.checkpoint_id),
        "issued_margin": row.issued_margin,
        "last_checked_on": _version_of(s, last.checkpoint_id) if last else None,
        "reissued_as": _public_id_of(s, row.reissued_as_id),
        "subject_ref": row.subject_ref,
        "issued_by": row.issued_by,
        "created_at": row.created_at.isoformat(),
        "updated_at": row.updated_at.isoformat(),
        "erased_at": row.erased_at.isoformat() if row.erased_at else None,
    }


def explain_list(ctx, status: str | None = None) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from forgetd.db.models import Explanation

    if status is not None and status not in STATUSES:
        raise InputError(f"must be one of {', '.join(STATUSES)}", field="--status")
    query = select(Explanation).order_by(Explanation.id)
    if status is not None:
        query = query.where(Explanation.status == status)
    with ctx.session() as s:
        return [_summary(s, row) for row in s.execute(query).scalars()]


def explain_show(ctx, public_id: str, include_record: bool = False) -> dict[str, Any]:
    from sqlalchemy import select

    from forgetd.db.models import ExplanationCheck

    check_explanation_id(public_id)
    with ctx.session() as s:
        row = _get(s, public_id)
        out = _summary(s, row)
        out["settings"] = row.settings
        out["robustness"] = row.robustness
        out["noise_floor"] = row.noise_floor
        out["checks"] = [
            {"version": _version_of(s, c.checkpoint_id), "status": c.status, "margin": c.margin,
             "spearman": c.spearman, "topk": c.topk, "decision_changed": c.decision_changed,
             "at": c.created_at.isoformat()}
            for c in s.execute(select(ExplanationCheck).where(ExplanationCheck.explanation_id == row.id)
                               .order_by(ExplanationCheck.id)).scalars()
        ]
        if include_record:
            out["record"] = _open(ctx, row)
        return out


def explain_report(ctx, model: str, checkpoint_version: int) -> dict[str, Any]:
    """The transition to checkpoint VERSION: how the live records fared in the checks made on it."""
    from sqlalchemy import func, select

    from forgetd import serving
    from forgetd.db.models import AliasHistory, Explanation, ExplanationCheck, Model

    if isinstance(checkpoint_version, bool) or not isinstance(checkpoint_version, int) or checkpoint_version < 0:
        raise InputError("must be a checkpoint version (0 or more)", field="--checkpoint")
    with ctx.session() as s:
        m = s.execute(select(Model).where(Model.name == model)).scalar_one_or_none()
        if m is None:
            raise InputError("unknown model; see `forgetd model list`", field="--model")
        checkpoint = serving.get_checkpoint(s, m, checkpoint_version)
        move = s.execute(select(AliasHistory).where(AliasHistory.to_checkpoint_id == checkpoint.id)
                         .order_by(AliasHistory.id.desc()).limit(1)).scalar_one_or_none()
        rows = s.execute(
            select(Explanation.kind, ExplanationCheck.status, func.count())
            .join(Explanation, Explanation.id == ExplanationCheck.explanation_id)
            .where(ExplanationCheck.checkpoint_id == checkpoint.id)
            .group_by(Explanation.kind, ExplanationCheck.status)
        ).all()
        counts = {st: 0 for st in LIVE}
        by_kind: dict[str, dict[str, int]] = {}
        for kind, st, n in rows:
            counts[st] += n
            by_kind.setdefault(kind, {x: 0 for x in LIVE})[st] += n
        checked = sum(counts.values())
        return {
            "model": m.name,
            "version": checkpoint.version,
            "from_version": _version_of(s, move.from_checkpoint_id) if move and move.from_checkpoint_id else None,
            "served_at": move.at.isoformat() if move else None,
            "checked": checked,
            "counts": counts,
            "invalidation_rate": counts[INVALIDATED] / checked if checked else None,
            "at_risk_rate": counts[AT_RISK] / checked if checked else None,
            "by_kind": {k: {**v, "invalidation_rate": v[INVALIDATED] / sum(v.values())} for k, v in by_kind.items()},
        }


# --- re-validation (the `revalidate` job) ---------------------------------------------------------------------


def _check_values(record: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """The stored check: statuses and scores only; the new attributions and the person's decision stay out."""
    def finite(v):
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None

    if record["kind"] == "counterfactual":
        changed = result["decision_at_x"] != int(record["original_class"])
        detail = {"kind": "counterfactual", "at_risk_margin": result["at_risk_margin"],
                  "thresholds": result["thresholds"]}
        return {"status": result["status"], "margin": finite(result["margin"]), "spearman": None, "topk": None,
                "decision_changed": changed, "detail": detail}
    detail = {"kind": "attribution", "thresholds": result["thresholds"],
              "completeness_gap": finite(result["completeness_gap"])}
    return {"status": result["status"], "margin": None, "spearman": finite(result["spearman"]),
            "topk": finite(result["topk"]), "decision_changed": bool(result["decision_changed"]), "detail": detail}


def revalidate(ctx, model_id: int, checkpoint_id: int) -> dict[str, Any]:
    """Re-check every live record of the model on the checkpoint (if it is still served). Idempotent: a
    record whose latest check (or issue) is already on this checkpoint is skipped, so a retried job adds
    nothing."""
    from sqlalchemy import select

    from forgetd import audit, pipeline
    from forgetd.db.models import Checkpoint, Explanation, ExplanationCheck, Model
    from forgetd.explain.revalidate import revalidate as recheck
    from forgetd.families import family_module
    from forgetd.privacy import open_payload

    with ctx.session() as s:
        checkpoint = s.get(Checkpoint, checkpoint_id)
        if checkpoint is None or checkpoint.model_id != model_id:
            raise DomainError(f"model {model_id} has no checkpoint id {checkpoint_id}", field="checkpoint_id")
        version = checkpoint.version
        if checkpoint.status != "served":  # a later move superseded this one; its own job re-checks
            return {"version": version, "checked": 0, "skipped": "not served"}
        todo = []
        for row in s.execute(select(Explanation).where(Explanation.model_id == model_id,
                                                       Explanation.status.in_(LIVE))
                             .order_by(Explanation.id)).scalars():
            last = _last_check(s, row.id)
            if (last.checkpoint_id if last else row.checkpoint_id) == checkpoint_id:
                continue
            todo.append((row.id, row.public_id, row.wrapped_dek, row.payload_ct))
        if not todo:
            return {"version": version, "checked": 0}
        family = s.get(Model, model_id).family
        weights_dir = pipeline.checkpoint_dir(ctx, checkpoint)
    model = family_module(family).load_model(weights_dir)
    results = {}
    for row_id, public_id, wrapped, ciphertext in todo:
        record = json.loads(open_payload(ctx.keyring, wrapped, ciphertext, aad=public_id.encode()))
        results[row_id] = _check_values(record, recheck(record, model))

    with ctx.session() as s:
        now = _now()
        checkpoint = s.get(Checkpoint, checkpoint_id)
        counts = {st: 0 for st in LIVE}
        changed: dict[str, str] = {}
        for row_id, values in results.items():
            row = s.execute(select(Explanation).where(Explanation.id == row_id).with_for_update()).scalar_one()
            last = _last_check(s, row.id)
            if row.status not in LIVE or (last is not None and last.checkpoint_id == checkpoint_id):
                continue  # erased, reissued or checked by a concurrent run meanwhile
            s.add(ExplanationCheck(explanation_id=row.id, checkpoint_id=checkpoint_id, created_at=now, **values))
            counts[values["status"]] += 1
            if row.status != values["status"]:
                changed[row.public_id] = f"{row.status}->{values['status']}"
                row.status = values["status"]
                row.updated_at = now
        checked = sum(counts.values())
        if checked:
            audit.append(s, actor="system:revalidate", action="explanation.revalidated", resource_type="model",
                         resource_id=checkpoint.model.name,
                         payload={"version": version, "content_id": checkpoint.content_id, "checked": checked,
                                  "counts": counts, "changed": changed}, at=now)
        return {"version": version, "checked": checked, "counts": counts, "changed": changed}


# --- erasure -------------------------------------------------------------------------------------------------


def erase_for_request(s, request, *, now: datetime, actor: str) -> int:
    """Called in the transaction that completes a request: a `data` request erases its subject's records
    of that model (data key and ciphertext destroyed; aggregate counts kept in the audit event)."""
    from sqlalchemy import select

    from forgetd import audit
    from forgetd.db.models import Explanation
    from forgetd.enums import RequestKind

    if request.kind != RequestKind.data:
        return 0
    rows = s.execute(select(Explanation).where(
        Explanation.subject_ref == request.subject_ref, Explanation.model_id == request.model_id,
        Explanation.status != ERASED,
    ).order_by(Explanation.id).with_for_update()).scalars().all()
    if not rows:
        return 0
    by_status: dict[str, int] = {}
    for row in rows:
        by_status[row.status] = by_status.get(row.status, 0) + 1
        row.status = ERASED
        row.wrapped_dek = None
        row.payload_ct = None
        row.erased_at = now
        row.updated_at = now
    audit.append(s, actor=actor, action="explanation.erased", resource_type="request", resource_id=request.public_id,
                 payload={"model": request.model.name, "count": len(rows), "by_status": by_status,
                          "explanations": [r.public_id for r in rows]}, at=now)
    return len(rows)
