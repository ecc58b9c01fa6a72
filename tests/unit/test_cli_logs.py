"""`smsledger logs` pieces: record filters, the aligned line, and following a changing file."""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from ledger import Event, OrderState
from scheduler.cli.logs import (
    LineFormatter,
    LogFilter,
    LogTail,
    parse_record,
    read_lines,
    record_time,
    rotated_logs,
    with_event,
    with_history,
)

ISTANBUL = ZoneInfo("Europe/Istanbul")


def rec(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "timestamp": "2026-11-28T10:00:00.000001Z",
        "level": "info",
        "event": "order_state_changed",
    }
    base.update(fields)
    return base


def test_only_json_objects_are_records() -> None:
    assert parse_record('{"event": "x"}') == {"event": "x"}
    assert parse_record("not json") is None
    assert parse_record("[1, 2]") is None
    assert parse_record('{"event": ') is None


def test_record_time_reads_the_utc_timestamp() -> None:
    assert record_time(rec()) == datetime(2026, 11, 28, 10, 0, 0, 1, tzinfo=UTC)
    assert record_time(rec(timestamp="yesterday")) is None
    assert record_time(rec(timestamp="2026-11-28T10:00:00")) is None  # naive: unknowable
    assert record_time({"event": "x"}) is None


def test_each_filter_alone() -> None:
    assert LogFilter().matches(rec())
    assert LogFilter(order="42").matches(rec(order_id=42))  # ints and strings alike
    assert not LogFilter(order="42").matches(rec(order_id="43"))
    assert not LogFilter(order="42").matches(rec())
    assert LogFilter(event="provider_call").matches(rec(event="provider_call"))
    assert not LogFilter(event="provider_call").matches(rec())
    since = datetime(2026, 11, 28, 10, 0, 0, 1, tzinfo=UTC)
    assert LogFilter(since=since).matches(rec())  # at the boundary: included
    assert not LogFilter(since=since).matches(rec(timestamp="2026-11-28T09:59:59Z"))
    assert not LogFilter(since=since).matches(rec(timestamp="garbage"))


def test_level_means_that_level_or_more_severe() -> None:
    levels = ["debug", "info", "warning", "error", "critical"]
    shown = [lv for lv in levels if LogFilter(level="warning").matches(rec(level=lv))]
    assert shown == ["warning", "error", "critical"]
    assert LogFilter(level="debug").matches(rec(level="DEBUG"))
    assert not LogFilter(level="debug").matches(rec(level="chatter"))


def test_filters_combine_with_and() -> None:
    f = LogFilter(order="1", level="warning")
    assert f.matches(rec(order_id="1", level="error"))
    assert not f.matches(rec(order_id="1", level="info"))
    assert not f.matches(rec(order_id="2", level="error"))


def test_lines_show_time_level_event_order_then_the_rest_aligned() -> None:
    formatter = LineFormatter(ISTANBUL)
    records = [
        rec(order_id="1", to_state="cancelled", reason="verified by report"),
        rec(level="warning", event="provider_call", endpoint="get-report"),
    ]
    formatter.fit(records)
    first, second = (formatter.format(r) for r in records)
    assert first == (
        "2026-11-28 13:00:00 +03  info     order_state_changed  1  "
        'to_state=cancelled reason="verified by report"'
    )
    assert second == (
        "2026-11-28 13:00:00 +03  warning  provider_call        -  endpoint=get-report"
    )


def test_columns_only_grow_so_followed_lines_stay_aligned() -> None:
    formatter = LineFormatter(ISTANBUL)
    wide = formatter.format(rec(event="a_rather_long_event_name", order_id="1"))
    narrow = formatter.format(rec(event="x", order_id="1"))
    assert wide.index(" 1") == narrow.index(" 1")


def test_tail_waits_for_the_file_and_returns_whole_lines_only(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    tail = LogTail(path)
    assert tail.poll() == []
    path.write_text("one\ntw")
    assert tail.poll() == ["one"]
    with path.open("a") as f:
        f.write("o\nthree\n")
    assert tail.poll() == ["two", "three"]
    assert tail.poll() == []
    tail.close()


def test_tail_starts_over_after_truncation(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text("a long first line\nsecond\n")
    tail = LogTail(path)
    assert tail.poll() == ["a long first line", "second"]
    path.write_text("new\n")  # truncated in place, shorter than before
    assert tail.poll() == ["new"]
    tail.close()


def test_tail_follows_a_rotated_file(tmp_path: Path) -> None:
    path = tmp_path / "log.jsonl"
    path.write_text("old 1\n")
    tail = LogTail(path)
    assert tail.poll() == ["old 1"]
    with path.open("a") as f:
        f.write("old 2\n")
    path.replace(tmp_path / "log.jsonl.1")
    path.write_text("new 1\n")
    assert tail.poll() == ["old 2", "new 1"]
    path.unlink()  # removed: wait for it to come back
    assert tail.poll() == []
    path.write_text("newer\n")
    assert tail.poll() == ["newer"]
    tail.close()


def test_control_characters_in_any_field_are_escaped_and_keep_the_line_whole() -> None:
    formatter = LineFormatter(ISTANBUL)
    line = formatter.format(
        rec(order_id="9\x1b[2J", message="Üyelik\nhatalı\u202e", event="evil\x9b")
    )
    assert line.isprintable()
    assert "evil\\x9b" in line
    assert "9\\x1b[2J" in line
    assert 'message="Üyelik\\nhatalı\\u202e"' in line


def _registration(order_id: str, at: datetime) -> Event:
    return Event(order_id, at, None, OrderState.SCHEDULED, "registered", {})


def test_the_ledger_registration_goes_before_the_first_later_line() -> None:
    lines = [
        json.dumps(rec(timestamp="2026-11-28T09:00:00Z", event="orders_registered")),
        json.dumps(rec(timestamp="2026-11-28T11:00:00Z", order_id="7", to_state="dispatched")),
    ]

    merged = list(with_event(lines, _registration("7", datetime(2026, 11, 28, 10, tzinfo=UTC))))

    assert merged[0] == lines[0] and merged[2] == lines[1]
    added = parse_record(merged[1])
    assert added == {
        "timestamp": "2026-11-28T10:00:00Z",
        "level": "info",
        "event": "order_state_changed",
        "order_id": "7",
        "from_state": None,
        "to_state": "scheduled",
        "reason": "registered",
        "source": "ledger",
    }
    assert record_time(added) == datetime(2026, 11, 28, 10, tzinfo=UTC)
    assert LogFilter(order="7", event="order_state_changed").matches(added)


def test_a_registration_the_log_already_has_is_not_added_twice() -> None:
    lines = [json.dumps(rec(order_id="7", from_state=None, to_state="scheduled"))]

    registration = _registration("7", datetime(2026, 11, 28, tzinfo=UTC))
    assert list(with_event(lines, registration)) == lines


def test_a_registration_later_than_every_line_goes_last() -> None:
    lines = ["not json", json.dumps(rec(timestamp="2026-11-28T09:00:00Z"))]

    merged = list(with_event(lines, _registration("7", datetime(2026, 11, 28, 10, tzinfo=UTC))))

    assert merged[:2] == lines
    assert parse_record(merged[2])["order_id"] == "7"  # type: ignore[index]


def test_rotated_logs_are_found_oldest_first_compressed_or_not(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    for name in ("log.jsonl.1", "log.jsonl.2.gz", "log.jsonl.10.gz", "log.jsonl.bak", "other.1"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in rotated_logs(log)] == [
        "log.jsonl.10.gz",
        "log.jsonl.2.gz",
        "log.jsonl.1",
    ]
    assert rotated_logs(tmp_path / "missing" / "log.jsonl") == []


def test_a_compressed_rotated_log_is_read_line_by_line(tmp_path: Path) -> None:
    packed = tmp_path / "log.jsonl.2.gz"
    with gzip.open(packed, "wb") as file:
        file.write(b"one\ntwo\nthree")
    assert list(read_lines(packed)) == ["one", "two", "three"]


def test_lines_are_read_chunk_by_chunk_as_the_caller_takes_them(tmp_path: Path) -> None:
    """The first line is handed over before the rest of a big file is read."""
    path = tmp_path / "log.jsonl"
    path.write_bytes(b"first\n" + b"x" * 100 + b"\n" * 200_000)
    tail = LogTail(path)
    lines = tail.lines()
    assert next(lines) == "first"
    assert tail._file is not None and tail._file.tell() < 200_000
    tail.close()


def test_the_log_s_own_registration_a_little_after_the_ledger_s_time_is_not_doubled() -> None:
    """The log line is written just after the commit, so its time is a little later."""
    own = json.dumps(
        rec(timestamp="2026-11-28T10:00:02Z", order_id="7", from_state=None, to_state="scheduled")
    )
    lines = [json.dumps(rec(timestamp="2026-11-28T10:00:01Z", event="other")), own]

    merged = with_event(lines, _registration("7", datetime(2026, 11, 28, 10, tzinfo=UTC)))

    assert list(merged) == lines


def test_lines_stream_through_once_past_the_registration_lookahead() -> None:
    """Only the lines of the minute after the registration are held back."""
    later = [json.dumps(rec(timestamp=f"2026-11-28T1{h}:00:00Z")) for h in range(1, 4)]
    merged = with_event(iter(later), _registration("7", datetime(2026, 11, 28, 10, tzinfo=UTC)))

    assert parse_record(next(merged))["source"] == "ledger"  # type: ignore[index]
    assert next(merged) == later[0], "given before the rest was read"


def _event(at: datetime, from_state: OrderState | None, to_state: OrderState) -> Event:
    return Event("7", at, from_state, to_state, "why", {"seconds_left": 1.5})


def test_history_puts_in_each_change_the_log_lacks_and_only_those() -> None:
    """A campaign's cancel logs one line per batch: the order's own change comes from the
    ledger; a change the log has (the daemon's, one line per order) is not doubled."""
    hour = datetime(2026, 11, 28, 10, tzinfo=UTC)
    registered = _event(hour, None, OrderState.SCHEDULED)
    requested = _event(hour + timedelta(hours=1), OrderState.SCHEDULED, OrderState.CANCEL_REQUESTED)
    cancelling = _event(
        hour + timedelta(hours=2), OrderState.CANCEL_REQUESTED, OrderState.CANCELLING
    )
    own = json.dumps(
        rec(timestamp="2026-11-28T12:00:00.5Z", order_id="7", from_state="cancel_requested",
            to_state="cancelling")
    )  # fmt: skip

    merged = [
        parse_record(line) for line in with_history([own], [cancelling, requested, registered])
    ]

    assert [(r["to_state"], r.get("source")) for r in merged if r is not None] == [
        ("scheduled", "ledger"),
        ("cancel_requested", "ledger"),
        ("cancelling", None),
    ]
    assert merged[1] is not None and merged[1]["details"] == {"seconds_left": 1.5}


def test_an_earlier_line_of_the_same_change_does_not_stand_for_a_later_one() -> None:
    """A cancel put back and asked for again: two changes alike, the log has the first only."""
    hour = datetime(2026, 11, 28, 10, tzinfo=UTC)
    first = _event(hour, OrderState.CANCEL_REQUESTED, OrderState.CANCELLING)
    second = _event(hour + timedelta(hours=1), OrderState.CANCEL_REQUESTED, OrderState.CANCELLING)
    logged = json.dumps(
        rec(timestamp="2026-11-28T10:00:00.2Z", order_id="7", from_state="cancel_requested",
            to_state="cancelling")
    )  # fmt: skip

    merged = [parse_record(line) for line in with_history([logged], [first, second])]

    assert [(r["timestamp"], r.get("source")) for r in merged if r is not None] == [
        ("2026-11-28T10:00:00.2Z", None),
        ("2026-11-28T11:00:00Z", "ledger"),
    ]
