"""Checks a forget specification against the model it is filed for, at intake.

`forgetd.intake` checks a specification's syntax; whether it fits the model (keys its family reads, record
ids its dataset holds, classes it has, concepts it knows) used to show only when the request's adapter was
trained, after identity checks and approvals: a typo in a record id, or texts filed against a tabular
model, failed the request days later. Each family's `check_forget` refuses that at submission instead.
Messages name the field and the item's position, never the value (ids and texts are personal data).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from forgetd.errors import InputError


def check_keys(spec: dict[str, Any], *, family: str, used: Iterable[str], forgets: str) -> None:
    """Every key given is one the family reads: anything else would be stored, approved and ignored."""
    used = tuple(used)
    for key in spec:
        if key not in used:
            raise InputError(f"{family} models do not use it; they forget {forgets}", field=f"forget.{key}")
    if not any(spec.get(key) for key in used):
        raise InputError(f"nothing to forget: {family} models forget {forgets}", field="forget")


def check_record_ids(spec: dict[str, Any], dataset: Callable[[], Any], *, model: str,
                     needs: Callable[[Any], str | None] = lambda record: None) -> None:
    """forget.corpus_ids name records of the model's registered dataset (`needs(record)` may say what such a
    record lacks, e.g. rows)."""
    ids = spec.get("corpus_ids") or []
    if not ids:
        return
    registered = dataset()
    if registered is None:
        raise InputError(f"model {model} has no registered dataset to find these records in; register it with "
                         "`forgetd model register … --dataset FILE`", field="forget.corpus_ids")
    for i, record_id in enumerate(ids):
        record = registered.records.get(record_id)
        if record is None:
            raise InputError(f"not a record of model {model}'s registered dataset; check the id",
                             field=f"forget.corpus_ids[{i}]")
        lacking = needs(record)
        if lacking:
            raise InputError(f"that record of model {model}'s dataset {lacking}", field=f"forget.corpus_ids[{i}]")
