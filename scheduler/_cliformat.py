"""How the command shows orders and events: JSON for scripts, aligned tables for people.

Pure functions of their arguments (the zone and `now` are passed in), so the shapes are pinned by
unit tests without a ledger. JSON times are ISO 8601 in UTC with a ``Z`` (see `format_utc`);
human times are in the configured zone.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ledger import Event, Order
from scheduler._timeparse import format_countdown, format_local, format_utc

__all__ = [
    "event_json",
    "history_table",
    "order_json",
    "order_table",
    "pair",
    "status_lines",
    "table",
    "to_json",
]

_NONE = "-"


def _utc_or_none(value: datetime | None) -> str | None:
    return None if value is None else format_utc(value)


def order_json(order: Order) -> dict[str, Any]:
    """The machine-readable form of an order (`status --json`, one item of `list --json`)."""
    return {
        "order_id": order.order_id,
        "state": order.state.value,
        "send_at": format_utc(order.send_at),
        "label": order.label,
        "reason": order.reason,
        "cancel_requested_at": _utc_or_none(order.cancel_requested_at),
        "cancel_attempts": order.cancel_attempts,
        "last_provider_code": order.last_provider_code,
        "created_at": format_utc(order.created_at),
        "updated_at": format_utc(order.updated_at),
    }


def event_json(event: Event) -> dict[str, Any]:
    """The machine-readable form of one history row (an item of `history --json`)."""
    return {
        "at": format_utc(event.at),
        "from_state": None if event.from_state is None else event.from_state.value,
        "to_state": event.to_state.value,
        "reason": event.reason,
        "details": dict(event.details),
    }


def to_json(value: object) -> str:
    """JSON text as the command prints it: UTF-8 kept readable, two-space indent."""
    return json.dumps(value, ensure_ascii=False, indent=2)


def pair(key: str, value: object) -> str:
    """``key=value``, quoting the value as JSON when it is not a plain word."""
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'=" for c in value):
        return f"{key}={value}"
    return f"{key}={json.dumps(value, ensure_ascii=False, separators=(',', ':'), default=str)}"


def _details_text(details: Mapping[str, Any]) -> str:
    return " ".join(pair(k, v) for k, v in details.items()) or _NONE


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Lines of a table whose columns are as wide as their widest cell, two spaces apart."""
    body = [list(row) for row in rows]
    widths = [len(h) for h in headers]
    for row in body:
        for n, cell in enumerate(row):
            widths[n] = max(widths[n], len(cell))
    return [
        "  ".join(cell.ljust(widths[n]) for n, cell in enumerate(row)).rstrip()
        for row in [list(headers), *body]
    ]


def order_table(orders: Iterable[Order], zone: ZoneInfo, now: datetime) -> list[str]:
    """One line per order: id, state, send time in `zone`, countdown, label, reason."""
    rows = [
        (
            order.order_id,
            order.state.value,
            format_local(order.send_at, zone),
            format_countdown(order.send_at, now),
            order.label or _NONE,
            order.reason or _NONE,
        )
        for order in orders
    ]
    return table(("ORDER", "STATE", "SEND AT", "DISPATCH", "LABEL", "REASON"), rows)


def status_lines(order: Order, zone: ZoneInfo, now: datetime) -> list[str]:
    """Every field of one order, one per line, times in `zone` with a countdown."""

    def when(value: datetime | None, *, seconds: bool = True) -> str:
        if value is None:
            return _NONE
        return f"{format_local(value, zone, seconds=seconds)} ({format_countdown(value, now)})"

    fields = [
        ("order", order.order_id),
        ("state", order.state.value),
        ("send at", when(order.send_at, seconds=False)),
        ("label", order.label or _NONE),
        ("reason", order.reason or _NONE),
        ("cancel asked", when(order.cancel_requested_at)),
        ("cancel attempts", str(order.cancel_attempts)),
        (
            "provider code",
            _NONE if order.last_provider_code is None else str(order.last_provider_code),
        ),
        ("registered", when(order.created_at)),
        ("updated", when(order.updated_at)),
    ]
    width = max(len(name) for name, _ in fields)
    return [f"{name.ljust(width)}  {value}" for name, value in fields]


def history_table(events: Iterable[Event], zone: ZoneInfo) -> list[str]:
    """One line per state change, oldest first, times in `zone` to the second."""
    rows = [
        (
            format_local(event.at, zone, seconds=True),
            _NONE if event.from_state is None else event.from_state.value,
            event.to_state.value,
            event.reason or _NONE,
            _details_text(event.details),
        )
        for event in events
    ]
    return table(("AT", "FROM", "TO", "REASON", "DETAILS"), rows)
