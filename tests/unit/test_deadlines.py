from datetime import date, datetime, timedelta, timezone

import pytest

from forgetd.deadlines import (
    add_months,
    check_extension,
    deadline_state,
    due_at,
    due_date,
    effective_due_at,
    extended_due_at,
    next_working_day,
)
from forgetd.durations import Duration
from forgetd.errors import DomainError, InputError

UTC = timezone.utc


def at(y, m, d, hh=12, mm=0, ss=0):
    return datetime(y, m, d, hh, mm, ss, tzinfo=UTC)


@pytest.mark.parametrize(
    ("start", "n", "expected"),
    [
        (date(2027, 1, 31), 1, date(2027, 2, 28)),
        (date(2028, 1, 31), 1, date(2028, 2, 29)),
        (date(2027, 3, 31), 1, date(2027, 4, 30)),
        (date(2027, 1, 15), 1, date(2027, 2, 15)),
        (date(2027, 12, 31), 2, date(2028, 2, 29)),
        (date(2027, 11, 30), 3, date(2028, 2, 29)),
        (date(2027, 3, 31), -1, date(2027, 2, 28)),
    ],
)
def test_add_months_keeps_the_day_or_clamps_to_month_end(start, n, expected):
    assert add_months(start, n) == expected


def test_next_working_day():
    assert next_working_day(date(2027, 3, 6)) == date(2027, 3, 8)  # Saturday → Monday
    assert next_working_day(date(2027, 3, 7)) == date(2027, 3, 8)  # Sunday → Monday
    assert next_working_day(date(2027, 3, 5)) == date(2027, 3, 5)  # Friday stays
    assert next_working_day(date(2027, 3, 8)) == date(2027, 3, 8)


def test_received_jan_31_2027_is_due_feb_28_then_moved_off_the_weekend():
    # The calendar-month rule gives Feb 28 2027, a Sunday, so the working-day rule makes it Mon Mar 1.
    assert add_months(at(2027, 1, 31).date(), 1) == date(2027, 2, 28)
    assert date(2027, 2, 28).weekday() == 6
    assert due_date(at(2027, 1, 31)) == date(2027, 3, 1)


def test_received_jan_31_in_a_common_year_is_due_feb_28_when_that_is_a_weekday():
    assert date(2029, 2, 28).weekday() == 2  # a Wednesday
    assert due_date(at(2029, 1, 31)) == date(2029, 2, 28)


def test_received_jan_31_is_due_feb_29_in_a_leap_year():
    assert date(2028, 2, 29).weekday() == 1  # a Tuesday: no weekend shift
    assert due_date(at(2028, 1, 31)) == date(2028, 2, 29)
    assert due_at(at(2028, 1, 31)) == datetime(2028, 2, 29, 23, 59, 59, tzinfo=UTC)


def test_due_date_on_a_weekend_moves_to_monday():
    assert due_date(at(2027, 2, 6)) == date(2027, 3, 8)  # Mar 6 2027 is a Saturday
    assert due_date(at(2027, 2, 7)) == date(2027, 3, 8)  # Mar 7 2027 is a Sunday
    assert due_date(at(2027, 2, 5)) == date(2027, 3, 5)  # Friday stays


def test_received_date_is_taken_in_utc():
    late_evening_new_york = datetime(2027, 1, 14, 22, 0, tzinfo=timezone(timedelta(hours=-5)))
    assert due_date(late_evening_new_york) == date(2027, 2, 15)


def test_paused_time_extends_the_due_date_by_whole_days():
    received = at(2027, 3, 1)  # due Thu Apr 1 2027
    assert due_date(received) == date(2027, 4, 1)
    assert due_date(received, paused_seconds=1) == date(2027, 4, 2)
    assert due_date(received, paused_seconds=86400) == date(2027, 4, 2)
    assert due_date(received, paused_seconds=86401) == date(2027, 4, 5)  # Sat Apr 3 → Mon Apr 5
    assert due_at(received, 3 * 86400) == datetime(2027, 4, 5, 23, 59, 59, tzinfo=UTC)


def test_naive_datetimes_are_programming_errors():
    with pytest.raises(ValueError):
        due_date(datetime(2027, 1, 1))
    with pytest.raises(ValueError):
        deadline_state(datetime(2027, 1, 1), at(2027, 2, 1), timedelta(days=7))
    with pytest.raises(ValueError):
        due_date(at(2027, 1, 1), paused_seconds=-1)


def test_extended_due_at_counts_from_the_original_due_date():
    original = due_at(at(2027, 1, 31))  # Mon Mar 1 2027
    assert extended_due_at(original, 2) == datetime(2027, 5, 3, 23, 59, 59, tzinfo=UTC)  # May 1 is a Saturday
    assert extended_due_at(original, 1) == datetime(2027, 4, 1, 23, 59, 59, tzinfo=UTC)
    assert effective_due_at(original, None) == original
    assert effective_due_at(original, extended_due_at(original, 1)) == extended_due_at(original, 1)


DUE = datetime(2027, 4, 1, 23, 59, 59, tzinfo=UTC)
P2M = Duration(months=2)


def extension(**overrides):
    args = dict(now=at(2027, 3, 20), due_at=DUE, already_extended=False, months=2,
                notified_at=at(2027, 3, 19), max_extension=P2M)
    args.update(overrides)
    check_extension(**args)


def test_extension_allowed_before_due_with_notification():
    extension()
    extension(months=1, now=DUE, notified_at=DUE)


def test_extension_refused_after_the_original_due_date():
    with pytest.raises(DomainError, match="original due date has passed"):
        extension(now=DUE + timedelta(seconds=1))


def test_extension_refused_without_notification_date():
    with pytest.raises(DomainError, match="--notified-at") as info:
        extension(notified_at=None)
    assert info.value.field == "--notified-at"


def test_extension_refused_with_notification_in_the_future():
    with pytest.raises(DomainError) as info:
        extension(notified_at=at(2027, 3, 21))
    assert info.value.field == "--notified-at"


def test_extension_never_exceeds_two_months():
    with pytest.raises(DomainError) as info:
        extension(months=3)
    assert info.value.field == "--months"
    with pytest.raises(DomainError):  # a policy cannot raise the legal cap
        extension(months=3, max_extension=Duration(months=6))
    with pytest.raises(DomainError):
        extension(months=2, max_extension=Duration(months=1))


def test_extension_only_once():
    with pytest.raises(DomainError, match="only once"):
        extension(already_extended=True)


@pytest.mark.parametrize("months", [0, -1])
def test_extension_months_must_be_positive(months):
    with pytest.raises(InputError) as info:
        extension(months=months)
    assert info.value.field == "--months"


def test_deadline_states():
    week = timedelta(days=7)
    assert deadline_state(DUE - timedelta(days=8), DUE, week) == "ok"
    assert deadline_state(DUE - week, DUE, week) == "at_risk"
    assert deadline_state(DUE - timedelta(days=1), DUE, week) == "at_risk"
    assert deadline_state(DUE, DUE, week) == "at_risk"
    assert deadline_state(DUE + timedelta(seconds=1), DUE, week) == "breached"
