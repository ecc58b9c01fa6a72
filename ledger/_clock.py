"""The one clock of smsledger.

Every business decision (is this cancel still allowed? is this claim stale?) reads the time here,
so a frozen test clock reaches all of them and no query ever asks the database for its own time.
"""

from __future__ import annotations

from datetime import UTC, datetime

from ledger.errors import NaiveDatetimeError

__all__ = ["ensure_aware", "utcnow"]


def utcnow() -> datetime:
    """Return the current time as an aware UTC datetime."""
    return datetime.now(UTC)


def ensure_aware(value: datetime, name: str = "datetime") -> datetime:
    """Return `value` converted to UTC, refusing naive datetimes instead of guessing their zone."""
    if not isinstance(value, datetime):
        raise NaiveDatetimeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
        raise NaiveDatetimeError(
            f"{name} {value.isoformat()} is naive; pass an aware datetime (for example with "
            "tzinfo=datetime.UTC or a ZoneInfo)"
        )
    return value.astimezone(UTC)
