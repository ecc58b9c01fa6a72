"""How the command shows orders and events: JSON for scripts, aligned tables for people.

Pure functions of their arguments (the zone and `now` are passed in), so the shapes are pinned by
unit tests without a ledger. JSON times are ISO 8601 in UTC with a ``Z`` (see `format_utc`);
human times are in the configured zone.

Text that comes from outside (labels and reasons in the ledger, provider messages, order ids, log
fields) goes through `escape` before a person sees it, and `to_json` writes the same characters as
``\\u`` escapes: a newline or an escape sequence in a label must not forge a row or drive the
terminal. Which characters count is `ledger.inputs.is_control`.

`say` and `say_error` are the two places the command prints what it has formatted.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ledger.inputs import is_control
from scheduler.cli.times import format_countdown, format_local, format_utc

if TYPE_CHECKING:  # the models import SQLAlchemy, which `smsledger logs` does without
    from ledger import CancelSummary, Event, LabelSummary, Order
    from ledger.leads import MarginReport

__all__ = [
    "ERROR_PREFIX",
    "cancel_json",
    "delivery_json",
    "escape",
    "escape_json",
    "event_json",
    "history_table",
    "label_summary_json",
    "margins_lines",
    "order_json",
    "order_table",
    "pair",
    "say",
    "say_error",
    "status_lines",
    "summary_table",
    "table",
    "to_json",
]

_NONE = "-"
#: Characters of the longest bar of a text histogram.
HISTOGRAM_WIDTH = 40

#: How every error line of the command starts (argparse's included).
ERROR_PREFIX = "smsledger: error: "


def say(lines: Sequence[str] | str) -> None:
    """Print `lines` (already formatted and escaped) on stdout, at once."""
    text = lines if isinstance(lines, str) else "\n".join(lines)
    print(text, flush=True)


def say_error(message: str) -> None:
    """One error line on stderr; the message may quote the provider or the ledger, so it is
    escaped."""
    print(f"{ERROR_PREFIX}{escape(message)}", file=sys.stderr, flush=True)


def escape(text: str) -> str:
    """`text` with every control character written as a Python escape (``\\n``, ``\\x1b``,
    ``\\u202e``), for the command's human outputs."""
    if text.isprintable():  # no control character (the common case)
        return text
    return "".join(_escaped(c) if is_control(c) else c for c in text)


def _escaped(char: str) -> str:
    return char.encode("unicode_escape").decode("ascii")


def escape_json(text: str) -> str:
    """JSON text with the control characters JSON leaves raw written as ``\\uXXXX`` escapes.

    ``json.dumps(ensure_ascii=False)`` escapes only U+0000..U+001F; DEL, C1 controls and bidi
    overrides pass through. Outside strings JSON text has no such characters (tab and CR between
    tokens are kept), so the value read back is unchanged.
    """
    if text.isprintable():
        return text
    return "".join(_json_escaped(c) if is_control(c) and c not in "\t\n\r" else c for c in text)


def _json_escaped(char: str) -> str:
    code = ord(char)
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    code -= 0x10000  # outside the BMP: a surrogate pair, as JSON writes it
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


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
        "delivery": delivery_json(order),
    }


def delivery_json(order: Order) -> dict[str, Any] | None:
    """The provider's delivery counters of an order, or None when they were never read."""
    delivery = order.delivery
    if delivery is None:
        return None
    return {
        "total": delivery.total,
        "delivered": delivery.delivered,
        "undelivered": delivery.undelivered,
        "waiting": delivery.waiting,
        "checked_at": format_utc(delivery.checked_at),
    }


def _delivery_text(order: Order) -> str:
    delivery = order.delivery
    if delivery is None:
        return _NONE

    def count(value: int | None) -> str:
        return "?" if value is None else str(value)

    return (
        f"{count(delivery.delivered)} delivered, {count(delivery.undelivered)} undelivered, "
        f"{count(delivery.waiting)} waiting of {count(delivery.total)}"
    )


def event_json(event: Event) -> dict[str, Any]:
    """The machine-readable form of one history row (an item of `history --json`)."""
    return {
        "at": format_utc(event.at),
        "from_state": None if event.from_state is None else event.from_state.value,
        "to_state": event.to_state.value,
        "reason": event.reason,
        "details": dict(event.details),
    }


def cancel_json(summary: CancelSummary) -> dict[str, Any]:
    """`cancel --json`: the count of each outcome, and one result per order."""
    first = summary.earliest_refused_send_at
    return {
        **{outcome.value: count for outcome, count in summary.counts.items()},
        "earliest_refused_send_at": _utc_or_none(first),
        "dry_run": summary.dry_run,
        "orders": [
            {
                "order_id": r.order_id,
                "state": None if r.state is None else r.state.value,
                "outcome": r.outcome.value,
            }
            for r in summary.results
        ],
    }


def to_json(value: object) -> str:
    """JSON text as the command prints it: UTF-8 kept readable, two-space indent."""
    return escape_json(json.dumps(value, ensure_ascii=False, indent=2))


def pair(key: str, value: object) -> str:
    """``key=value``, quoting the value as JSON when it is not a plain word."""
    if isinstance(value, str) and value and not any(c.isspace() or c in "\"'=" for c in value):
        return escape(f"{key}={value}")
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return escape(f"{key}={text}")


def _details_text(details: Mapping[str, Any]) -> str:
    return " ".join(pair(k, v) for k, v in details.items()) or _NONE


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Lines of a table whose columns are as wide as their widest cell, two spaces apart.

    Cells are escaped (`escape`): a cell is text from the ledger or the provider.
    """
    body = [[escape(cell) for cell in row] for row in rows]
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
        ("delivery", _delivery_text(order)),
        ("delivery read", when(order.delivery_checked_at)),
        ("registered", when(order.created_at)),
        ("updated", when(order.updated_at)),
    ]
    width = max(len(name) for name, _ in fields)
    return [f"{name.ljust(width)}  {escape(value)}" for name, value in fields]


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


def label_summary_json(summary: LabelSummary) -> dict[str, Any]:
    """One item of `summary --json`: a label's count per state (every state), next send time
    and cancels at risk."""
    return {
        "label": summary.label,
        "states": {state.value: count for state, count in summary.states.items()},
        "next_send_at": _utc_or_none(summary.next_send_at),
        "at_risk": summary.at_risk,
    }


def summary_table(summaries: Iterable[LabelSummary], zone: ZoneInfo) -> list[str]:
    """One line per label: orders, next send time in `zone`, cancels at risk, states with orders."""
    rows = [
        (
            _NONE if s.label is None else s.label,
            str(s.total),
            _NONE if s.next_send_at is None else format_local(s.next_send_at, zone),
            str(s.at_risk),
            " ".join(f"{state.value}={count}" for state, count in s.states.items() if count),
        )
        for s in summaries
    ]
    return table(("LABEL", "ORDERS", "NEXT SEND", "AT RISK", "STATES"), rows)


def margins_lines(
    report: MarginReport, bars: Sequence[tuple[float, float, int]], days: float
) -> list[str]:
    """`smsledger margins` for people: the figures, the verdict and a histogram of the leads
    (`bars`, from `ledger.leads.histogram`)."""

    def sec(value: float | None) -> str:
        return _NONE if value is None else f"{value:g} s"

    lines = [
        f"observations of the last {days:g} days: {report.orders_observed} orders with a bound, "
        f"{report.closed_brackets} closed brackets",
        f"longest lead seen (lower bound):  {sec(report.longest_lead_lower_bound_seconds)}",
        f"lead of closed brackets:          p50 {sec(report.lead_p50)}, "
        f"p90 {sec(report.lead_p90)}, max {sec(report.lead_max)}",
        f"configured:                       refuse_before {sec(report.refuse_before_seconds)}, "
        f"warn_before {sec(report.warn_before_seconds)}",
        f"suggested:                        refuse_before "
        f"{sec(report.suggested_refuse_before_seconds)}, "
        f"warn_before {sec(report.suggested_warn_before_seconds)}",
        f"verdict: {report.verdict.value}",
    ]
    if bars:
        most = max(count for _, _, count in bars)
        lines.append("leads of closed brackets (midpoints):")
        for low, high, count in bars:
            bar = "#" * max(1 if count else 0, round(count / most * HISTOGRAM_WIDTH))
            lines.append(f"  {low:>6g}-{high:<6g} s  {count:>4}  {bar}")
    return lines
