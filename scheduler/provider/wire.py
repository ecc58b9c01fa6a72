"""The iletiMerkezi wire format: the facts the client and the sandbox both rely on, written once.

Endpoint names and paths, the provider's zone and time formats, the documented status codes, the
client's defaults, and the reading of ints and order ids that may arrive as numbers or strings.
The client (`scheduler.provider.client`) speaks this format; the sandbox
(`scheduler.provider.sandbox`) answers in it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Final
from zoneinfo import ZoneInfo

from scheduler.provider.errors import CODE_MEANINGS, SendTimeError

__all__ = [
    "CANCEL_ORDER",
    "CODE_MEANINGS",
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_TIMEOUT_SECONDS",
    "ENDPOINTS",
    "GET_BALANCE",
    "GET_REPORT",
    "GET_REPORTS",
    "PROVIDER_ZONE",
    "REPORTS_DATE_FORMAT",
    "REPORTS_MAX_DAYS",
    "REPORTS_PAGE_SIZE",
    "SEND_DATETIME_FORMAT",
    "SEND_SMS",
    "TIMESTAMP_FORMAT",
    "as_int",
    "as_order_id",
    "endpoint_path",
    "format_send_datetime",
    "parse_timestamp",
    "reports_range_problem",
    "utcnow",
]

#: The provider's production base URL; the client still takes it explicitly (sandbox, resellers).
DEFAULT_BASE_URL: Final = "https://api.iletimerkezi.com"
#: The deadline of every call, connect to last byte, in seconds (`api.timeout_seconds`).
DEFAULT_TIMEOUT_SECONDS: Final = 10.0
#: Most connections the client's shared pool opens at once.
DEFAULT_MAX_CONNECTIONS: Final = 64
#: The zone `sendDateTime` is read in (inferred: Turkey time, UTC+3 all year since 2016). Always
#: the provider's, whatever zone people read and write times in.
PROVIDER_ZONE: Final = ZoneInfo("Europe/Istanbul")

SEND_SMS: Final = "send-sms"
GET_REPORT: Final = "get-report"
CANCEL_ORDER: Final = "cancel-order"
GET_BALANCE: Final = "get-balance"
#: The order list behind the panel's history, by creation date (reconcile reads it).
GET_REPORTS: Final = "get-reports"
#: The endpoints smsledger uses (and the sandbox serves), in this order.
ENDPOINTS: Final = (SEND_SMS, GET_REPORT, CANCEL_ORDER, GET_BALANCE, GET_REPORTS)

#: get-reports: `end` at most this many days after `start` (else 458, bad date range).
REPORTS_MAX_DAYS: Final = 10
#: get-reports: orders a page (the official SDK pages by `ceil(count / 30)`).
REPORTS_PAGE_SIZE: Final = 30
#: get-reports: the `start` and `end` dates of its filter, days in the provider's zone.
REPORTS_DATE_FORMAT: Final = "%Y-%m-%d"

#: `sendDateTime`: the provider's "dd/MM/yyyy HH:mm", in `PROVIDER_ZONE`; never seconds.
SEND_DATETIME_FORMAT: Final = "%d/%m/%Y %H:%M"
#: The provider's own timestamps (a report's `submitAt` and `sendAt`), in its zone.
TIMESTAMP_FORMAT: Final = "%Y-%m-%d %H:%M:%S"


def reports_range_problem(start: date, end: date) -> str | None:
    """Why get-reports refuses the range `start`..`end` (458), or None when it takes it."""
    if end < start:
        return f"end {end.isoformat()} is before start {start.isoformat()}"
    if (end - start).days > REPORTS_MAX_DAYS:
        return (
            f"{start.isoformat()}..{end.isoformat()} spans {(end - start).days} days; "
            f"get-reports takes at most {REPORTS_MAX_DAYS}"
        )
    return None


def parse_timestamp(value: object, zone: ZoneInfo) -> datetime | None:
    """A provider timestamp (`TIMESTAMP_FORMAT` in `zone`) as aware UTC; None when unreadable."""
    if not isinstance(value, str):
        return None
    try:
        local = datetime.strptime(value.strip(), TIMESTAMP_FORMAT)
    except ValueError:
        return None
    return local.replace(tzinfo=zone).astimezone(UTC)


def endpoint_path(endpoint: str) -> str:
    """The URL path of an endpoint's JSON flavour, such as "/v1/send-sms/json"."""
    return f"/v1/{endpoint}/json"


def utcnow() -> datetime:
    """The current time, aware, in UTC (the provider package's clock; not the ledger's)."""
    return datetime.now(UTC)


def as_int(value: object) -> int | None:
    """Read an int that may come as a number or a numeric string; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    return None


def as_order_id(value: object) -> str | None:
    """Read an order id that may come as an int or a string; None when missing or empty."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def format_send_datetime(send_at: datetime, zone: ZoneInfo, now: datetime) -> str:
    """Return `send_at` as the provider's `sendDateTime` ("dd/MM/yyyy HH:mm" in `zone`).

    Raises SendTimeError when `send_at` is naive, not on a whole minute (the provider reportedly
    sends a time with seconds immediately, so a time that would need rounding is refused rather
    than moved), or not after `now`.
    """
    if send_at.tzinfo is None or send_at.utcoffset() is None:
        raise SendTimeError(
            f"send time {send_at.isoformat()} is naive; pass an aware datetime (for example in UTC)"
        )
    local = send_at.astimezone(zone)
    if local.second or local.microsecond:
        raise SendTimeError(
            f"send time {send_at.isoformat()} is not on a whole minute; the provider takes "
            "minute precision, so pass a time with zero seconds and microseconds"
        )
    if send_at <= now:
        raise SendTimeError(
            f"send time {send_at.isoformat()} is not in the future (now is {now.isoformat()}); "
            "an order must be scheduled ahead to be cancellable"
        )
    return local.strftime(SEND_DATETIME_FORMAT)
