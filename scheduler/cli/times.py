"""Times as the command reads and writes them: pure functions, no clock of their own.

Reading: `parse_when` takes ISO 8601 (an offset is kept as written, a naive time is read in the
configured zone, a local time the zone skips or repeats is refused instead of guessed);
`parse_since` also takes relative forms such as ``10m``.

Writing: `format_utc` for machine output ("2026-12-01T07:00:00Z"), `format_local` for people
("2026-12-01 10:00 +03"), `format_countdown` for "in 2 h 5 min" / "3 min ago".
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

__all__ = [
    "WhenError",
    "format_countdown",
    "format_local",
    "format_offset",
    "format_utc",
    "localize",
    "parse_since",
    "parse_when",
]

_EXAMPLE = "write ISO 8601, e.g. 2026-12-01T10:00 or 2026-12-01T10:00+03:00"
_RELATIVE = re.compile(r"(\d+)\s*([smhd])", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class WhenError(ValueError):
    """A time given on the command line cannot be read; the message names the value."""


def _parse_iso(text: str) -> datetime | None:
    """The datetime `text` spells in ISO 8601, or None when it is not one."""
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        return None


def _is_date_only(text: str) -> bool:
    try:
        date.fromisoformat(text.strip())
    except ValueError:
        return False
    return True


def parse_when(text: str, zone: ZoneInfo) -> datetime:
    """Read an ISO 8601 date and time; return it as aware UTC.

    With an offset (``+03:00``, ``Z``) the time is taken as written; without one it is read in
    `zone`. A date without a time of day, anything that is not ISO 8601, and a local time that
    `zone` skips (clocks jump forward) or repeats (clocks go back) raise `WhenError`.
    """
    if _is_date_only(text):
        raise WhenError(f"{text!r} is a date without a time of day; {_EXAMPLE}")
    value = _parse_iso(text)
    if value is None:
        raise WhenError(f"{text!r} is not an ISO 8601 date and time; {_EXAMPLE}")
    if value.tzinfo is not None and value.utcoffset() is not None:
        return value.astimezone(UTC)
    return localize(value.replace(tzinfo=None), zone).astimezone(UTC)


def localize(naive: datetime, zone: ZoneInfo) -> datetime:
    """Attach `zone` to a wall-clock time, refusing one the zone skips or shows twice.

    The check is a round trip through UTC: a time in a gap does not come back as itself, and an
    ambiguous one has two different offsets (``fold=0`` and ``fold=1``).
    """
    earlier = naive.replace(tzinfo=zone, fold=0)
    later = naive.replace(tzinfo=zone, fold=1)
    if earlier.utcoffset() == later.utcoffset():
        return earlier
    shown = naive.isoformat(timespec="minutes" if not naive.second else "seconds")
    back = earlier.astimezone(UTC).astimezone(zone).replace(tzinfo=None)
    if back != naive:
        raise WhenError(
            f"{shown} does not exist in {zone.key} (the clocks jump forward over it); "
            "pick another time or add a UTC offset"
        )
    first = shown + format_offset(earlier.utcoffset(), colon=True)
    second = shown + format_offset(later.utcoffset(), colon=True)
    raise WhenError(
        f"{shown} happens twice in {zone.key} (the clocks go back); "
        f"say which with an offset: {first} or {second}"
    )


def parse_since(text: str, zone: ZoneInfo, now: datetime) -> datetime:
    """Read a ``--since`` value: ``30s``, ``10m``, ``2h``, ``1d`` before `now`, or `parse_when`."""
    match = _RELATIVE.fullmatch(text.strip())
    if match:
        amount, unit = int(match[1]), match[2].lower()
        return now - timedelta(seconds=amount * _UNIT_SECONDS[unit])
    if not _is_date_only(text) and _parse_iso(text) is None:
        raise WhenError(
            f"{text!r} is neither a relative time (30s, 10m, 2h, 1d) nor an ISO 8601 date and "
            "time such as 2026-12-01T10:00"
        )
    return parse_when(text, zone)


def format_utc(value: datetime) -> str:
    """ISO 8601 in UTC with a ``Z``: "2026-12-01T07:00:00Z" (a fraction only when non-zero)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def format_offset(offset: timedelta | None, *, colon: bool = False) -> str:
    """ "+03", "-03:30", "+00"; with `colon` always "+03:00"."""
    minutes = round((offset or timedelta(0)).total_seconds() / 60)
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    if rest or colon:
        return f"{sign}{hours:02d}:{rest:02d}"
    return f"{sign}{hours:02d}"


def format_local(value: datetime, zone: ZoneInfo, *, seconds: bool = False) -> str:
    """The time in `zone` for people: "2026-12-01 10:00 +03" (with `seconds`, "10:00:05")."""
    local = value.astimezone(zone)
    clock = local.strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
    return f"{clock} {format_offset(local.utcoffset())}"


def format_countdown(target: datetime, now: datetime) -> str:
    """How far `target` is from `now`: "in 45 s", "in 12 min", "in 2 h 5 min", "3 d 4 h ago".

    Parts are truncated, never rounded up: "in 12 min" means at least 12 whole minutes are left.
    """
    delta = (target - now).total_seconds()
    total = int(abs(delta))
    if total == 0:
        return "now"
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        text = f"{days} d" + (f" {hours} h" if hours else "")
    elif hours:
        text = f"{hours} h" + (f" {minutes} min" if minutes else "")
    elif minutes:
        text = f"{minutes} min"
    else:
        text = f"{secs} s"
    return f"in {text}" if delta > 0 else f"{text} ago"
