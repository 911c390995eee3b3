"""Durations as policies and operators write them (ISO 8601 `P7D`, or `7d` on the command line).

Months stay a separate unit: a legal "one month" is a calendar month, never 30 days, so a duration
is (months, days, seconds) and months are applied with the calendar-month rule.
"""

from __future__ import annotations

import calendar
import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from forgetd.errors import InputError

_ISO_HINT = "expected an ISO 8601 duration such as P7D or P2M"
_HUMAN_HINT = "expected a duration such as 7d, 12h, 30m, 2w, 45s or an ISO 8601 duration such as P7D"

# Nothing forgetd schedules legitimately lies a century away; larger values are typos or abuse.
_MAX_DAYS = 100 * 365.25
# Bounds the int() conversion before the range check, so a megabyte of digits costs nothing.
_MAX_DIGITS = 9

_ISO_RE = re.compile(
    r"P(?:(?P<Y>[0-9]+)Y)?(?:(?P<M>[0-9]+)M)?(?:(?P<W>[0-9]+)W)?(?:(?P<D>[0-9]+)D)?"
    r"(?:T(?=[0-9])(?:(?P<h>[0-9]+)H)?(?:(?P<m>[0-9]+)M)?(?:(?P<s>[0-9]+)S)?)?"
)
_HUMAN_RE = re.compile(r"(?P<n>[0-9]+)\s*(?P<unit>[smhdw])")
_HUMAN_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True)
class Duration:
    months: int = 0
    days: int = 0
    seconds: int = 0

    @property
    def is_zero(self) -> bool:
        return self.months == 0 and self.days == 0 and self.seconds == 0

    def to_timedelta(self) -> timedelta:
        if self.months:
            raise ValueError("a duration with months has no fixed length; use add_duration")
        return timedelta(days=self.days, seconds=self.seconds)

    def __str__(self) -> str:
        years, months = divmod(self.months, 12)
        hours, rest = divmod(self.seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        date_part = "".join(f"{n}{u}" for n, u in ((years, "Y"), (months, "M"), (self.days, "D")) if n)
        time_part = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (seconds, "S")) if n)
        if not date_part and not time_part:
            return "PT0S"
        return "P" + date_part + (f"T{time_part}" if time_part else "")


def _clean(text: object, *, field: str, hint: str) -> str:
    if not isinstance(text, str):
        raise InputError(hint, field=field)
    if any(unicodedata.category(ch) == "Cc" for ch in text):
        raise InputError(f"control characters are not allowed; {hint}", field=field)
    text = text.strip()
    if not text:
        raise InputError(f"must not be empty; {hint}", field=field)
    if text.startswith("-"):
        raise InputError(f"must not be negative; {hint}", field=field)
    if re.search(r"[0-9][.,][0-9]", text):
        raise InputError(f"fractional values are not supported; {hint}", field=field)
    return text


def _number(raw: str | None, *, field: str, hint: str) -> int:
    if raw is None:
        return 0
    if len(raw.lstrip("0")) > _MAX_DIGITS:
        raise InputError(f"is too large (at most 100 years); {hint}", field=field)
    return int(raw)


def _checked(d: Duration, *, field: str, hint: str) -> Duration:
    approx_days = d.months * 365.25 / 12 + d.days + d.seconds / 86400
    if approx_days > _MAX_DAYS:
        raise InputError(f"is too large (at most 100 years); {hint}", field=field)
    return d


def parse_iso_duration(text: str, *, field: str) -> Duration:
    return _parse_iso(_clean(text, field=field, hint=_ISO_HINT), field=field, hint=_ISO_HINT)


def _parse_iso(text: str, *, field: str, hint: str) -> Duration:
    match = _ISO_RE.fullmatch(text.upper())
    if match is None or not any(match.groupdict().values()):
        raise InputError(hint, field=field)
    n = {k: _number(v, field=field, hint=hint) for k, v in match.groupdict().items()}
    return _checked(
        Duration(
            months=n["Y"] * 12 + n["M"],
            days=n["W"] * 7 + n["D"],
            seconds=n["h"] * 3600 + n["m"] * 60 + n["s"],
        ),
        field=field,
        hint=hint,
    )


def parse_human_duration(text: str, *, field: str) -> Duration:
    text = _clean(text, field=field, hint=_HUMAN_HINT)
    match = _HUMAN_RE.fullmatch(text.lower())
    if match is None:
        return _parse_iso(text, field=field, hint=_HUMAN_HINT)
    total = _number(match["n"], field=field, hint=_HUMAN_HINT) * _HUMAN_SECONDS[match["unit"]]
    days, seconds = divmod(total, 86400)
    return _checked(Duration(days=days, seconds=seconds), field=field, hint=_HUMAN_HINT)


def add_months(d: date, n: int) -> date:
    """Same day-of-month n months later, clamped to that month's last day (Jan 31 + 1 → Feb 28/29)."""
    index = d.year * 12 + (d.month - 1) + n
    year, month0 = divmod(index, 12)
    last = calendar.monthrange(year, month0 + 1)[1]
    return d.replace(year=year, month=month0 + 1, day=min(d.day, last))


def add_duration(dt: datetime, d: Duration) -> datetime:
    if d.months:
        dt = datetime.combine(add_months(dt.date(), d.months), dt.timetz())
    return dt + timedelta(days=d.days, seconds=d.seconds)
