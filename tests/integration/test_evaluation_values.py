"""A check that cannot be computed is recorded as NaN and fails (forgetd.verify.checks). SQLite turned NaN
into NULL, the NOT NULL `evaluations.value` refused the row, and the evaluate job crashed (IntegrityError,
retried to death) instead of failing the request with the check named: found with the lifecycle demo's
tabular model, whose leave-out estimate is zero."""

from __future__ import annotations

import math

from sqlalchemy import select

from forgetd.api import utcnow
from forgetd.db.engine import session_scope
from forgetd.db.models import Evaluation


def test_nan_and_infinite_check_values_are_stored_and_read_back(ctx):
    values = [float("nan"), float("inf"), -float("inf"), 0.85, 0.0]
    with session_scope(ctx.engine) as s:
        for i, value in enumerate(values):
            s.add(Evaluation(target_kind="adapter", target_id=1, metric=f"check:m{i}", value=value,
                             threshold=float("nan") if i == 0 else 0.85, passed=False, created_at=utcnow()))
    with session_scope(ctx.engine) as s:
        rows = s.execute(select(Evaluation).order_by(Evaluation.id)).scalars().all()
        read = [r.value for r in rows]
        assert math.isnan(read[0]) and read[1:] == values[1:]
        assert math.isnan(rows[0].threshold) and rows[1].threshold == 0.85
