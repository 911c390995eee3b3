"""Validation of request submissions, shared by `request submit` and `request import`.

Everything an operator types is checked here before any row is written; each error names the field
and never echoes personal data back.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Any

from forgetd.enums import KIND_VALUES, RequestKind
from forgetd.errors import InputError

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
OPERATOR_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
IDEMPOTENCY_PATTERN = re.compile(r"^[A-Za-z0-9._:/-]{1,128}$")
PUBLIC_ID_PATTERN = re.compile(r"^rq_[a-z2-7]{16}$")
MAX_SUBJECT_CHARS = 512
MAX_REASON_CHARS = 1000
MAX_LIST_ITEMS = 10_000
# Payload texts may hold tabs and newlines; other control characters are almost always corruption.
_BAD_TEXT_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ANY_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

FORGET_LIST_FIELDS = ("texts", "prompts", "labels", "corpus_ids", "files", "anchors")
FORGET_TEXT_FIELDS = ("concept", "replacement")
SUBMISSION_FIELDS = ("model", "policy", "subject", "kind", "forget", "idempotency_key", "received_at")


def check_name(value: Any, *, field: str, what: str) -> str:
    if not isinstance(value, str) or not NAME_PATTERN.match(value):
        raise InputError(
            f"{what} names are 1-63 characters of a-z, 0-9, '.', '_' or '-', starting with a letter or digit",
            field=field,
        )
    return value


def check_operator(value: Any, *, field: str = "--operator") -> str:
    if not isinstance(value, str) or not OPERATOR_PATTERN.match(value):
        raise InputError("operator names are 1-64 characters of letters, digits, '.', '_', '@' or '-'", field=field)
    return value


def check_public_id(value: Any, *, field: str = "ID") -> str:
    if not isinstance(value, str) or not PUBLIC_ID_PATTERN.match(value):
        raise InputError("request ids look like rq_ followed by 16 characters (see `forgetd request list`)", field=field)
    return value


def check_reason(value: Any, *, field: str = "--reason", required: bool = True) -> str | None:
    if value is None or value == "":
        if required:
            raise InputError("a reason is required", field=field)
        return None
    if not isinstance(value, str):
        raise InputError("must be text", field=field)
    if _ANY_CONTROL.search(value):
        raise InputError("must not contain control characters", field=field)
    if len(value) > MAX_REASON_CHARS:
        raise InputError(f"at most {MAX_REASON_CHARS} characters", field=field)
    return value.strip()


def check_subject(value: Any, *, field: str = "subject") -> str:
    if not isinstance(value, str) or not value.strip():
        raise InputError("the data subject's identity is required (it is stored only as a keyed hash)", field=field)
    if _ANY_CONTROL.search(value):
        raise InputError("must not contain control characters", field=field)
    if len(value) > MAX_SUBJECT_CHARS:
        raise InputError(f"at most {MAX_SUBJECT_CHARS} characters", field=field)
    return value


def parse_timestamp(value: Any, *, field: str, now: datetime, allow_future: bool = False) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    else:
        if not isinstance(value, str) or _ANY_CONTROL.search(value) or len(value) > 40:
            raise InputError("expected an ISO 8601 timestamp such as 2026-11-27T09:30:00Z", field=field)
        text = value.strip()
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            text += "T00:00:00+00:00"
        try:
            parsed = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise InputError("expected an ISO 8601 timestamp such as 2026-11-27T09:30:00Z", field=field) from None
    if parsed.tzinfo is None:
        raise InputError("the timestamp needs a timezone, e.g. 2026-11-27T09:30:00Z", field=field)
    parsed = parsed.astimezone(timezone.utc)
    if parsed.year < 2000:
        raise InputError("timestamps before the year 2000 are not accepted", field=field)
    if not allow_future and parsed > now + timedelta(minutes=5):
        raise InputError("must not be in the future", field=field)
    return parsed


def _check_text(value: Any, *, field: str) -> str:
    if not isinstance(value, str):
        raise InputError(f"must be a string, got {type(value).__name__}", field=field)
    if _BAD_TEXT_CONTROL.search(value):
        raise InputError("must not contain control characters (tabs and newlines are fine)", field=field)
    return value


def check_file_ref(value: Any, *, field: str, data_root: Path) -> str:
    """File references are relative paths inside the data root: no absolute paths, no `..`."""
    text = _check_text(value, field=field)
    if not text or "\\" in text:
        raise InputError("file references are non-empty POSIX paths relative to the data root", field=field)
    path = PurePosixPath(text)
    if path.is_absolute() or ".." in path.parts:
        raise InputError(f"file references must stay inside the data root ({data_root}); no absolute paths or '..'", field=field)
    resolved = (data_root / path).resolve()
    root = data_root.resolve()
    if root not in resolved.parents and resolved != root:
        raise InputError(f"file reference leaves the data root ({data_root}) through a link", field=field)
    if not resolved.is_file():
        raise InputError(f"no such file under the data root ({data_root}); place it there first", field=field)
    return text


def check_forget_spec(spec: Any, *, kind: RequestKind, data_root: Path, field: str = "forget") -> dict[str, Any]:
    if spec is None:
        spec = {}
    if not isinstance(spec, dict):
        raise InputError("the forget specification must be a JSON object", field=field)
    clean: dict[str, Any] = {}
    for key, value in spec.items():
        sub = f"{field}.{key}"
        if key in FORGET_LIST_FIELDS:
            if not isinstance(value, list):
                raise InputError("must be a list", field=sub)
            if not value:
                # an empty list would pass intake, review and approval, then fail at training with nothing to forget
                raise InputError("must not be empty; list what to forget, or leave the key out", field=sub)
            if len(value) > MAX_LIST_ITEMS:
                raise InputError(f"at most {MAX_LIST_ITEMS} items", field=sub)
            items = []
            for i, item in enumerate(value):
                item_field = f"{sub}[{i}]"
                if key == "labels" and isinstance(item, int) and not isinstance(item, bool):
                    items.append(item)
                elif key == "files":
                    items.append(check_file_ref(item, field=item_field, data_root=data_root))
                else:
                    text = _check_text(item, field=item_field)
                    if key in ("texts", "prompts", "corpus_ids") and not text.strip():
                        raise InputError("must not be blank", field=item_field)
                    items.append(text)
            clean[key] = items
        elif key in FORGET_TEXT_FIELDS:
            clean[key] = _check_text(value, field=sub)
        else:
            known = ", ".join(FORGET_LIST_FIELDS + FORGET_TEXT_FIELDS)
            raise InputError(f"unknown key; known keys: {known}", field=sub)
    if kind is RequestKind.concept and not clean.get("concept", "").strip():
        raise InputError("a concept request needs the concept to erase", field=f"{field}.concept")
    if kind is RequestKind.class_ and not clean.get("labels"):
        raise InputError("a class request needs at least one label", field=f"{field}.labels")
    return clean


def scope_text(kind: RequestKind, spec: dict[str, Any]) -> str:
    """What makes two requests of one subject against one model the same demand."""
    if kind is RequestKind.concept:
        return "concept:" + " ".join(spec["concept"].casefold().split())
    if kind is RequestKind.class_:
        return "class:" + json.dumps(sorted(str(label) for label in spec["labels"]))
    return "data"


@dataclass(frozen=True)
class Submission:
    """A validated submission. `subject` and `forget` are personal data: they live only in memory
    until the subject is hashed and the payload encrypted."""

    model: str
    policy: str
    subject: str
    kind: RequestKind
    forget: dict[str, Any]
    payload: bytes
    idempotency_key: str | None
    received_at: datetime


def validate_submission(
    raw: Any,
    *,
    policies_dir: Path,
    data_root: Path,
    max_payload_bytes: int,
    now: datetime,
    field_prefix: str = "",
) -> Submission:
    """Validate one submission (a dict of SUBMISSION_FIELDS). Model existence is the caller's check."""
    from forgetd.policies import get_policy

    def f(name: str) -> str:
        return f"{field_prefix}{name}"

    if not isinstance(raw, dict):
        raise InputError("each request must be a JSON object", field=field_prefix.rstrip(".") or "request")
    unknown = sorted(set(raw) - set(SUBMISSION_FIELDS))
    if unknown:
        raise InputError(f"unknown field; known fields: {', '.join(SUBMISSION_FIELDS)}", field=f(unknown[0]))
    for required in ("model", "policy", "subject"):
        if raw.get(required) in (None, ""):
            raise InputError("is required", field=f(required))
    model = check_name(raw["model"], field=f("model"), what="model")
    policy_name = check_name(raw["policy"], field=f("policy"), what="policy")
    subject = check_subject(raw["subject"], field=f("subject"))
    policy = get_policy(policies_dir, policy_name)
    policy_kind = RequestKind.parse(policy.applies_to.kind)
    if raw.get("kind") is None:
        kind = policy_kind
    else:
        if raw["kind"] not in KIND_VALUES:
            raise InputError(f"must be one of {', '.join(KIND_VALUES)}", field=f("kind"))
        kind = RequestKind.parse(raw["kind"])
        if kind is not policy_kind:
            raise InputError(
                f"policy {policy_name} applies to {policy_kind.value} requests, not {kind.value}", field=f("kind")
            )
    forget = check_forget_spec(raw.get("forget"), kind=kind, data_root=data_root, field=f("forget"))
    payload = json.dumps(forget, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    if len(payload) > max_payload_bytes:
        raise InputError(
            f"payload is {len(payload)} bytes; the limit is {max_payload_bytes} (FORGETD_MAX_PAYLOAD_BYTES)",
            field=f("forget"),
        )
    key = raw.get("idempotency_key")
    if key is not None and (not isinstance(key, str) or not IDEMPOTENCY_PATTERN.match(key)):
        raise InputError("1-128 characters of letters, digits and . _ : / -", field=f("idempotency_key"))
    received_at = now
    if raw.get("received_at") is not None:
        received_at = parse_timestamp(raw["received_at"], field=f("received_at"), now=now)
    return Submission(
        model=model,
        policy=policy_name,
        subject=subject,
        kind=kind,
        forget=forget,
        payload=payload,
        idempotency_key=key,
        received_at=received_at,
    )


def read_forget_file(path: Path, *, max_payload_bytes: int, field: str = "--forget-file") -> Any:
    """Read a forget specification (JSON) without ever loading an oversized file into memory."""
    try:
        size = path.stat().st_size
    except OSError:
        raise InputError("file not found or unreadable", field=field) from None
    if not path.is_file():
        raise InputError("must be a regular file", field=field)
    if size > max_payload_bytes:
        raise InputError(f"file is {size} bytes; the limit is {max_payload_bytes} (FORGETD_MAX_PAYLOAD_BYTES)", field=field)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError("must be UTF-8 JSON", field=field) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON (line {exc.lineno}, column {exc.colno})", field=field) from None
