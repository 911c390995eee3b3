from datetime import datetime, timedelta, timezone

import pytest

from forgetd.durations import Duration, add_duration, parse_human_duration, parse_iso_duration
from forgetd.errors import InputError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("P2M", Duration(months=2)),
        ("P7D", Duration(days=7)),
        ("P30D", Duration(days=30)),
        ("P1Y2M3D", Duration(months=14, days=3)),
        ("P2W", Duration(days=14)),
        ("PT12H", Duration(seconds=12 * 3600)),
        ("P1DT2H30M", Duration(days=1, seconds=2 * 3600 + 30 * 60)),
        ("PT45S", Duration(seconds=45)),
        ("PT0S", Duration()),
        ("p7d", Duration(days=7)),
    ],
)
def test_iso_durations_parse(text, expected):
    assert parse_iso_duration(text, field="f") == expected


@pytest.mark.parametrize(
    "text",
    ["", "   ", "P", "PT", "P1DT", "-P7D", "P-7D", "P1.5D", "PT0,5H", "7D", "P7", "PT5", "P7DX", "P7D\n",
     "P\x007D", "P101Y", "P1300M", "P40000D", "P99999999999999D", "P1M1Y", "PT1H1D", None, 7],
)
def test_malformed_iso_durations_are_refused_naming_the_expected_form(text):
    with pytest.raises(InputError) as info:
        parse_iso_duration(text, field="deadline.at_risk")
    assert info.value.field == "deadline.at_risk"
    assert "P7D" in info.value.message
    assert "\n" not in str(info.value)


def test_a_hundred_years_is_the_limit():
    assert parse_iso_duration("P100Y", field="f") == Duration(months=1200)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", Duration(days=7)),
        ("12h", Duration(seconds=12 * 3600)),
        ("30m", Duration(seconds=30 * 60)),
        ("2w", Duration(days=14)),
        ("45s", Duration(seconds=45)),
        ("48h", Duration(days=2)),
        ("P2M", Duration(months=2)),
        ("PT30M", Duration(seconds=30 * 60)),
    ],
)
def test_human_durations_parse(text, expected):
    assert parse_human_duration(text, field="--due-within") == expected


@pytest.mark.parametrize("text", ["", "d", "7x", "-7d", "1.5d", "7 days", "7d7d", "999999999999d", "7\td"])
def test_malformed_human_durations_are_refused(text):
    with pytest.raises(InputError) as info:
        parse_human_duration(text, field="--due-within")
    assert info.value.field == "--due-within"
    assert "7d" in info.value.message


@pytest.mark.parametrize("text", ["P2M", "P7D", "P1Y2M3D", "PT12H", "P1DT2H30M", "PT45S", "PT0S", "P14D"])
def test_str_gives_iso_form_that_parses_back(text):
    d = parse_iso_duration(text, field="f")
    assert parse_iso_duration(str(d), field="f") == d


def test_str_and_is_zero():
    assert str(Duration(months=14, days=3, seconds=3725)) == "P1Y2M3DT1H2M5S"
    assert Duration().is_zero and not Duration(seconds=1).is_zero


def test_to_timedelta_refuses_months():
    assert Duration(days=1, seconds=5).to_timedelta() == timedelta(days=1, seconds=5)
    with pytest.raises(ValueError):
        Duration(months=1).to_timedelta()


def test_add_duration_uses_calendar_months_then_days_and_seconds():
    start = datetime(2027, 1, 31, 10, 30, tzinfo=timezone.utc)
    assert add_duration(start, Duration(months=1)) == datetime(2027, 2, 28, 10, 30, tzinfo=timezone.utc)
    assert add_duration(start, Duration(months=13)) == datetime(2028, 2, 29, 10, 30, tzinfo=timezone.utc)
    assert add_duration(start, Duration(days=1, seconds=3600)) == datetime(2027, 2, 1, 11, 30, tzinfo=timezone.utc)
    assert add_duration(start, Duration(months=1)).tzinfo is timezone.utc
