"""Legal deadlines for erasure requests (GDPR Art. 12(3)): one calendar month, extendable once.

Every datetime here is timezone-aware; the due *day* is computed in UTC and a request is due at the
end of that day, so it becomes overdue only once its due day is over.
"""

from __future__ import annotations

import math
from datetime import date, datetime, time, timedelta, timezone

from forgetd.durations import Duration, add_months
from forgetd.errors import DomainError, InputError

__all__ = [
    "ABSOLUTE_MAX_EXTENSION_MONTHS",
    "add_months",
    "check_extension",
    "deadline_state",
    "due_at",
    "due_date",
    "effective_due_at",
    "extended_due_at",
    "next_working_day",
]

# Art. 12(3) allows "a further two months" whatever a policy file says.
ABSOLUTE_MAX_EXTENSION_MONTHS = 2

_END_OF_DAY = time(23, 59, 59, tzinfo=timezone.utc)
_SATURDAY = 5


def _utc(dt: datetime, name: str) -> datetime:
    if not isinstance(dt, datetime):
        raise TypeError(f"{name} must be a datetime")
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")
    return dt.astimezone(timezone.utc)


def _end_of(d: date) -> datetime:
    return datetime.combine(d, _END_OF_DAY)


def next_working_day(d: date) -> date:
    weekday = d.weekday()
    return d + timedelta(days=7 - weekday) if weekday >= _SATURDAY else d


def due_date(received_at: datetime, paused_seconds: int = 0) -> date:
    if paused_seconds < 0:
        raise ValueError("paused_seconds must not be negative")
    received = _utc(received_at, "received_at").date()
    # A partial paused day still costs the requester a day, so it is given back whole.
    paused_days = math.ceil(paused_seconds / 86400)
    return next_working_day(add_months(received, 1) + timedelta(days=paused_days))


def due_at(received_at: datetime, paused_seconds: int = 0) -> datetime:
    return _end_of(due_date(received_at, paused_seconds))


def extended_due_at(due_at: datetime, months: int) -> datetime:
    if months < 1:
        raise ValueError("months must be at least 1")
    original = _utc(due_at, "due_at").date()
    return _end_of(next_working_day(add_months(original, months)))


def check_extension(
    *,
    now: datetime,
    due_at: datetime,
    already_extended: bool,
    months: int,
    notified_at: datetime | None,
    max_extension: Duration,
) -> None:
    """Raise unless the extension may be granted now; the checks follow the order an operator fixes them."""
    now = _utc(now, "now")
    due_at = _utc(due_at, "due_at")
    if max_extension.days or max_extension.seconds:
        raise ValueError("max_extension must be whole months")
    if isinstance(months, bool) or not isinstance(months, int) or months < 1:
        raise InputError("must be a whole number of months, at least 1", field="--months")
    if already_extended:
        raise DomainError("a request can be extended only once", field="--months")
    if now > due_at:
        raise DomainError("extension refused: the original due date has passed", field="--months")
    cap = min(max_extension.months, ABSOLUTE_MAX_EXTENSION_MONTHS)
    if months > cap:
        raise DomainError(
            f"extension of {months} months exceeds the maximum of {cap} "
            f"(policy allows {max_extension}, the law at most P{ABSOLUTE_MAX_EXTENSION_MONTHS}M)",
            field="--months",
        )
    if notified_at is None:
        raise DomainError(
            "the data subject must be notified of the extension: pass --notified-at", field="--notified-at"
        )
    if _utc(notified_at, "notified_at") > now:
        raise DomainError("the notification date must not be in the future", field="--notified-at")


def effective_due_at(due_at: datetime, extended_due_at: datetime | None) -> datetime:
    return extended_due_at if extended_due_at is not None else due_at


def deadline_state(now: datetime, effective_due: datetime, at_risk: timedelta) -> str:
    """'breached' after the due moment, 'at_risk' within `at_risk` of it, else 'ok'."""
    now = _utc(now, "now")
    effective_due = _utc(effective_due, "effective_due")
    if now > effective_due:
        return "breached"
    if effective_due - now <= at_risk:
        return "at_risk"
    return "ok"
