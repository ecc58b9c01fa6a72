"""How the command shows orders and history: exact JSON shapes, aligned tables."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from ledger import Event, Order, OrderState
from scheduler.cli.output import (
    escape,
    escape_json,
    event_json,
    history_table,
    order_json,
    order_table,
    pair,
    status_lines,
    table,
    to_json,
)

ISTANBUL = ZoneInfo("Europe/Istanbul")
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def make_order(**overrides: object) -> Order:
    values: dict[str, object] = {
        "order_id": "312891245",
        "send_at": datetime(2026, 11, 28, 14, 5, tzinfo=UTC),
        "state": OrderState.SCHEDULED,
        "label": None,
        "reason": "registered",
        "cancel_requested_at": None,
        "cancel_attempts": 0,
        "check_attempts": 0,
        "last_provider_code": None,
        "warned_at": None,
        "claim_owner": None,
        "claim_expires_at": None,
        "created_at": datetime(2026, 11, 28, 11, 0, 0, 250000, tzinfo=UTC),
        "updated_at": datetime(2026, 11, 28, 11, 0, 0, 250000, tzinfo=UTC),
    }
    values.update(overrides)
    return Order(**values)  # type: ignore[arg-type]


def test_order_json_has_the_documented_keys_and_utc_times() -> None:
    order = make_order(
        state=OrderState.CANCELLED,
        label="promo",
        reason="verified",
        cancel_requested_at=datetime(2026, 11, 28, 11, 30, tzinfo=UTC),
        cancel_attempts=1,
        last_provider_code=115,
    )
    assert order_json(order) == {
        "order_id": "312891245",
        "state": "cancelled",
        "send_at": "2026-11-28T14:05:00Z",
        "label": "promo",
        "reason": "verified",
        "cancel_requested_at": "2026-11-28T11:30:00Z",
        "cancel_attempts": 1,
        "last_provider_code": 115,
        "created_at": "2026-11-28T11:00:00.250000Z",
        "updated_at": "2026-11-28T11:00:00.250000Z",
        "delivery": None,
    }
    assert order_json(make_order())["cancel_requested_at"] is None


def test_delivery_counters_show_in_json_and_in_status_once_read() -> None:
    order = make_order(
        state=OrderState.DISPATCHED,
        total=5,
        delivered=3,
        undelivered=1,
        waiting=1,
        delivery_checked_at=datetime(2026, 11, 28, 11, 50, tzinfo=UTC),
    )
    assert order_json(order)["delivery"] == {
        "total": 5,
        "delivered": 3,
        "undelivered": 1,
        "waiting": 1,
        "checked_at": "2026-11-28T11:50:00Z",
    }
    text = "\n".join(status_lines(order, ISTANBUL, NOW))
    assert "delivery         3 delivered, 1 undelivered, 1 waiting of 5" in text
    assert "delivery read    2026-11-28 14:50:00 +03 (10 min ago)" in text
    assert "delivery         -" in "\n".join(status_lines(make_order(), ISTANBUL, NOW))


def test_event_json_has_the_documented_keys() -> None:
    first = Event("1", datetime(2026, 11, 28, 11, 0, tzinfo=UTC), None, OrderState.SCHEDULED, "r")
    second = Event(
        "1",
        datetime(2026, 11, 28, 11, 5, tzinfo=UTC),
        OrderState.SCHEDULED,
        OrderState.CANCEL_REQUESTED,
        None,
        {"seconds_left": 10.5},
    )
    assert [event_json(first), event_json(second)] == [
        {
            "at": "2026-11-28T11:00:00Z",
            "from_state": None,
            "to_state": "scheduled",
            "reason": "r",
            "details": {},
        },
        {
            "at": "2026-11-28T11:05:00Z",
            "from_state": "scheduled",
            "to_state": "cancel_requested",
            "reason": None,
            "details": {"seconds_left": 10.5},
        },
    ]


def test_json_text_keeps_turkish_letters_readable() -> None:
    text = to_json({"label": "İptal şöyle"})
    assert "İptal şöyle" in text
    assert json.loads(text) == {"label": "İptal şöyle"}


def test_table_columns_are_as_wide_as_their_widest_cell() -> None:
    assert table(("A", "LONG"), [("xxxx", "y"), ("z", "")]) == [
        "A     LONG",
        "xxxx  y",
        "z",
    ]


def test_order_table_shows_local_time_and_countdown() -> None:
    lines = order_table(
        [make_order(), make_order(order_id="7", label="a label", reason=None)], ISTANBUL, NOW
    )
    assert lines[0].split() == ["ORDER", "STATE", "SEND", "AT", "DISPATCH", "LABEL", "REASON"]
    assert lines[1].split("  ")[0] == "312891245"
    assert "2026-11-28 17:05 +03" in lines[1]
    assert "in 2 h 5 min" in lines[1]
    assert lines[2].startswith("7          scheduled")
    assert lines[2].endswith("a label  -")
    # Every column starts at the same place on every line.
    assert (
        len({line.index("STATE" if n == 0 else "scheduled") for n, line in enumerate(lines)}) == 1
    )


def test_status_lines_show_every_field_in_the_zone() -> None:
    lines = status_lines(
        make_order(cancel_requested_at=datetime(2026, 11, 28, 11, 57, tzinfo=UTC)), ISTANBUL, NOW
    )
    text = "\n".join(lines)
    assert "send at          2026-11-28 17:05 +03 (in 2 h 5 min)" in text
    assert "cancel asked     2026-11-28 14:57:00 +03 (3 min ago)" in text
    assert "provider code    -" in text


def test_history_table_shows_details_as_pairs() -> None:
    events = [
        Event("1", NOW, None, OrderState.SCHEDULED, "registered"),
        Event(
            "1",
            NOW + timedelta(seconds=5),
            OrderState.SCHEDULED,
            OrderState.CANCEL_REQUESTED,
            "cancel requested",
            {"seconds_left": 12.5, "note": "two words"},
        ),
    ]
    lines = history_table(events, ISTANBUL)
    assert lines[1].startswith("2026-11-28 15:00:00 +03  -          scheduled")
    assert lines[2].endswith('seconds_left=12.5 note="two words"')


def test_pairs_quote_only_what_needs_it() -> None:
    assert pair("a", "word") == "a=word"
    assert pair("a", "two words") == 'a="two words"'
    assert pair("a", "") == 'a=""'
    assert pair("a", None) == "a=null"
    assert pair("a", 3) == "a=3"
    assert pair("a", {"b": [1, 2]}) == 'a={"b":[1,2]}'


# -- text from outside is escaped ----------------------------------------------------------------

HOSTILE = "promo\n312891246  cancelled\x1b[2J\x9b31m\u202eevil\u2028"
HOSTILE_SHOWN = "promo\\n312891246  cancelled\\x1b[2J\\x9b31m\\u202eevil\\u2028"


def test_escape_writes_control_characters_as_escapes_and_keeps_other_text() -> None:
    assert escape(HOSTILE) == HOSTILE_SHOWN
    assert escape("İptal şöyle 😀\tx") == "İptal şöyle 😀\\tx"
    assert escape("plain") == "plain"


def test_a_hostile_label_and_reason_stay_on_their_row_in_every_human_output() -> None:
    order = make_order(label=HOSTILE, reason="provider said: \x1b]0;title\x07")
    event = Event(
        "312891245", NOW, None, OrderState.SCHEDULED, "bad\nreason", {"message": "m\x1b[1m"}
    )
    outputs = {
        "table": order_table([order], ISTANBUL, NOW),
        "status": status_lines(order, ISTANBUL, NOW),
        "history": history_table([event], ISTANBUL),
    }
    for name, lines in outputs.items():
        text = "\n".join(lines)
        assert all(line.isprintable() for line in lines), name
        assert len(text.splitlines()) == len(lines), name
    assert HOSTILE_SHOWN in "\n".join(outputs["table"])
    assert "provider said: \\x1b]0;title\\x07" in "\n".join(outputs["status"])
    assert "bad\\nreason  message=m\\x1b[1m" in outputs["history"][1]


def test_json_output_escapes_what_json_leaves_raw_and_reads_back_the_same() -> None:
    text = to_json({"label": HOSTILE})
    assert text.isascii() or all(c.isprintable() for c in text.replace("\n", ""))
    assert "\\u202e" in text and "\\u009b" in text
    assert json.loads(text) == {"label": HOSTILE}
    assert json.loads(escape_json('{"x": "a\U000e0001"}')) == {"x": "a\U000e0001"}
