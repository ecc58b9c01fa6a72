"""The command's reading and writing of times: WHEN, --since, countdowns, local and UTC forms."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from scheduler.cli.times import (
    WhenError,
    format_countdown,
    format_local,
    format_offset,
    format_utc,
    parse_since,
    parse_when,
)

ISTANBUL = ZoneInfo("Europe/Istanbul")
BERLIN = ZoneInfo("Europe/Berlin")
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-12-01T10:00+03:00", datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),
        ("2026-12-01T10:00:00+03:00", datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),
        ("2026-12-01T07:00Z", datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),
        ("2026-12-01T07:00:00Z", datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),
        ("2026-12-01 10:00-05:00", datetime(2026, 12, 1, 15, 0, tzinfo=UTC)),
        ("  2026-12-01T07:00Z ", datetime(2026, 12, 1, 7, 0, tzinfo=UTC)),
    ],
)
def test_a_time_with_an_offset_is_taken_as_written_whatever_the_zone(
    text: str, expected: datetime
) -> None:
    for zone in (ISTANBUL, BERLIN):
        result = parse_when(text, zone)
        assert result == expected
        assert result.tzinfo is UTC


def test_a_naive_time_is_read_in_the_configured_zone() -> None:
    assert parse_when("2026-12-01T10:00", ISTANBUL) == datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
    # Berlin is +01 in winter and +02 in summer: the zone's rules apply, not a fixed offset.
    assert parse_when("2026-12-01T10:00", BERLIN) == datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    assert parse_when("2026-07-01T10:00", BERLIN) == datetime(2026, 7, 1, 8, 0, tzinfo=UTC)
    assert parse_when("2026-07-01 10:00:30", BERLIN) == datetime(2026, 7, 1, 8, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "text", ["tomorrow", "", "2026-13-01T10:00", "01/12/2026 10:00", "10:00", "2026-12-01T25:00"]
)
def test_garbage_is_refused_naming_the_value(text: str) -> None:
    with pytest.raises(WhenError, match="not an ISO 8601 date and time") as info:
        parse_when(text, ISTANBUL)
    assert repr(text) in str(info.value)


def test_a_date_without_a_time_is_refused_rather_than_read_as_midnight() -> None:
    with pytest.raises(WhenError, match=r"'2026-12-01' is a date without a time of day"):
        parse_when("2026-12-01", ISTANBUL)


def test_a_local_time_the_clocks_skip_is_refused() -> None:
    # 2026-03-29 02:00 -> 03:00 in Berlin: 02:30 never happens there.
    with pytest.raises(WhenError, match=r"2026-03-29T02:30 does not exist in Europe/Berlin"):
        parse_when("2026-03-29T02:30", BERLIN)


def test_a_local_time_the_clocks_repeat_is_refused_with_both_readings() -> None:
    # 2026-10-25 03:00 -> 02:00 in Berlin: 02:30 happens at +02:00 and again at +01:00.
    with pytest.raises(WhenError, match="happens twice in Europe/Berlin") as info:
        parse_when("2026-10-25T02:30", BERLIN)
    assert "2026-10-25T02:30+02:00" in str(info.value)
    assert "2026-10-25T02:30+01:00" in str(info.value)


def test_an_offset_settles_an_ambiguous_or_skipped_local_time() -> None:
    assert parse_when("2026-10-25T02:30+01:00", BERLIN) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)
    assert parse_when("2026-10-25T02:30+02:00", BERLIN) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)


def test_times_next_to_a_transition_are_read_normally() -> None:
    assert parse_when("2026-03-29T03:00", BERLIN) == datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
    assert parse_when("2026-10-25T03:00", BERLIN) == datetime(2026, 10, 25, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "ago"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("1d", timedelta(days=1)),
        ("15M", timedelta(minutes=15)),
        (" 3 h ", timedelta(hours=3)),
        ("0m", timedelta(0)),
    ],
)
def test_since_takes_relative_forms_counted_back_from_now(text: str, ago: timedelta) -> None:
    assert parse_since(text, ISTANBUL, NOW) == NOW - ago


def test_since_takes_any_when_too() -> None:
    assert parse_since("2026-11-28T10:00", ISTANBUL, NOW) == datetime(
        2026, 11, 28, 7, 0, tzinfo=UTC
    )
    assert parse_since("2026-11-28T10:00Z", ISTANBUL, NOW) == datetime(
        2026, 11, 28, 10, 0, tzinfo=UTC
    )


@pytest.mark.parametrize("text", ["10x", "yesterday", "-5m", "1h30m", "m"])
def test_since_refuses_what_is_neither_relative_nor_iso(text: str) -> None:
    with pytest.raises(WhenError, match="neither a relative time") as info:
        parse_since(text, ISTANBUL, NOW)
    assert repr(text) in str(info.value)


def test_since_keeps_the_date_only_and_dst_refusals() -> None:
    with pytest.raises(WhenError, match="date without a time"):
        parse_since("2026-11-28", ISTANBUL, NOW)
    with pytest.raises(WhenError, match="does not exist"):
        parse_since("2026-03-29T02:30", BERLIN, NOW)


@pytest.mark.parametrize(
    ("delta", "text"),
    [
        (timedelta(0), "now"),
        (timedelta(milliseconds=400), "now"),
        (timedelta(seconds=45), "in 45 s"),
        (timedelta(seconds=59, milliseconds=999), "in 59 s"),
        (timedelta(minutes=1), "in 1 min"),
        (timedelta(minutes=12, seconds=59), "in 12 min"),
        (timedelta(hours=1), "in 1 h"),
        (timedelta(hours=2, minutes=5, seconds=30), "in 2 h 5 min"),
        (timedelta(days=1), "in 1 d"),
        (timedelta(days=3, hours=4, minutes=59), "in 3 d 4 h"),
        (-timedelta(seconds=5), "5 s ago"),
        (-timedelta(minutes=3, seconds=20), "3 min ago"),
        (-timedelta(hours=1, minutes=1), "1 h 1 min ago"),
        (-timedelta(days=2), "2 d ago"),
    ],
)
def test_countdown_truncates_to_the_two_largest_units(delta: timedelta, text: str) -> None:
    assert format_countdown(NOW + delta, NOW) == text


def test_local_form_uses_the_zone_and_a_short_offset() -> None:
    when = datetime(2026, 12, 1, 7, 0, 5, tzinfo=UTC)
    assert format_local(when, ISTANBUL) == "2026-12-01 10:00 +03"
    assert format_local(when, ISTANBUL, seconds=True) == "2026-12-01 10:00:05 +03"
    assert format_local(when, BERLIN) == "2026-12-01 08:00 +01"
    assert format_local(when, ZoneInfo("Asia/Kolkata")) == "2026-12-01 12:30 +05:30"
    assert format_local(when, ZoneInfo("America/St_Johns")) == "2026-12-01 03:30 -03:30"
    assert format_local(when, ZoneInfo("UTC")) == "2026-12-01 07:00 +00"


def test_offsets_format_with_and_without_colon() -> None:
    assert format_offset(timedelta(hours=3)) == "+03"
    assert format_offset(timedelta(hours=3), colon=True) == "+03:00"
    assert format_offset(-timedelta(hours=4, minutes=30)) == "-04:30"
    assert format_offset(None) == "+00"


def test_utc_form_is_iso_with_z_and_a_fraction_only_when_there_is_one() -> None:
    assert format_utc(datetime(2026, 12, 1, 10, 0, tzinfo=ISTANBUL)) == "2026-12-01T07:00:00Z"
    assert (
        format_utc(datetime(2026, 12, 1, 7, 0, 0, 120000, tzinfo=UTC))
        == "2026-12-01T07:00:00.120000Z"
    )
    # What it prints, Python reads back exactly.
    value = datetime(2026, 12, 1, 7, 0, 0, 5, tzinfo=UTC)
    assert datetime.fromisoformat(format_utc(value)) == value
