"""Reading smsledger's JSON-lines log for `smsledger logs`: filter, format, follow.

Every line the log writer produces is one JSON object with ``timestamp`` (ISO 8601 UTC), ``level``
and ``event``; anything else on a line of its own is "not JSON" and is skipped by the caller.
`LogTail` reads a file that may not exist yet, grow, be truncated or be replaced (rotation) and
hands back only whole lines.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any
from zoneinfo import ZoneInfo

from ledger.models import Event
from scheduler.cli.output import escape, pair
from scheduler.cli.times import format_local

__all__ = [
    "LEVELS",
    "LineFormatter",
    "LogFilter",
    "LogTail",
    "parse_record",
    "record_time",
    "with_registration",
]

#: Severity order of the levels the log writer uses; a `--level` shows that level and above.
LEVELS: dict[str, int] = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_SHOWN_FIRST = ("timestamp", "level", "event", "order_id")
_READ_SIZE = 64 * 1024


def parse_record(line: str) -> dict[str, Any] | None:
    """The JSON object on `line`, or None when the line is not one."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def record_time(record: Mapping[str, Any]) -> datetime | None:
    """The record's aware ``timestamp``, or None when it is missing or unreadable."""
    raw = record.get("timestamp")
    if not isinstance(raw, str):
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return value if value.tzinfo is not None else None


def with_registration(lines: list[str], registration: Event) -> list[str]:
    """`lines` with the order's registration read from the ledger, where the log has no line.

    `register_many` logs one `orders_registered` line per call, not one per order, so an order's
    story in the log may start at its first change after registration. The ledger's history
    holds that event; it is put in as the `order_state_changed` line `register` would have
    written (marked ``"source": "ledger"``), before the first line logged after it.
    """
    order_id = registration.order_id
    for line in lines:
        record = parse_record(line)
        if (
            record is not None
            and record.get("event") == "order_state_changed"
            and str(record.get("order_id")) == order_id
            and record.get("from_state") is None
            and record.get("to_state") == registration.to_state.value
        ):
            return lines
    at = registration.at.astimezone(UTC)
    text = json.dumps(
        {
            "timestamp": at.isoformat().replace("+00:00", "Z"),
            "level": "info",
            "event": "order_state_changed",
            "order_id": order_id,
            "from_state": None,
            "to_state": registration.to_state.value,
            "reason": registration.reason,
            "source": "ledger",
        }
    )
    for n, line in enumerate(lines):
        record = parse_record(line)
        when = record_time(record) if record is not None else None
        if when is not None and when > at:
            return [*lines[:n], text, *lines[n:]]
    return [*lines, text]


@dataclass(frozen=True)
class LogFilter:
    """The `logs` filters; all given ones must hold (AND). None means "any"."""

    order: str | None = None
    event: str | None = None
    level: str | None = None  # this level or more severe; one of `LEVELS`
    since: datetime | None = None  # aware; records at or after it

    def matches(self, record: Mapping[str, Any]) -> bool:
        if self.order is not None and str(record.get("order_id")) != self.order:
            return False
        if self.event is not None and record.get("event") != self.event:
            return False
        if self.level is not None:
            rank = LEVELS.get(str(record.get("level", "")).lower())
            if rank is None or rank < LEVELS[self.level]:
                return False
        if self.since is not None:
            when = record_time(record)
            if when is None or when < self.since:
                return False
        return True


@dataclass
class LineFormatter:
    """Formats records as aligned lines: local time, level, event, order id, other pairs.

    Column widths only grow, so lines printed while following stay aligned with earlier ones;
    `fit` sizes them to a batch first.
    """

    zone: ZoneInfo
    _widths: list[int] = field(default_factory=lambda: [0, 0, 0, 0], init=False)

    def _cells(self, record: Mapping[str, Any]) -> list[str]:
        when = record_time(record)
        order_id = record.get("order_id")
        cells = [
            format_local(when, self.zone, seconds=True)
            if when
            else str(record.get("timestamp", "-")),
            str(record.get("level", "-")),
            str(record.get("event", "-")),
            "-" if order_id is None else str(order_id),
        ]
        return [escape(cell) for cell in cells]  # a log line may carry anything

    def fit(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            for n, cell in enumerate(self._cells(record)):
                self._widths[n] = max(self._widths[n], len(cell))

    def format(self, record: Mapping[str, Any]) -> str:
        cells = self._cells(record)
        for n, cell in enumerate(cells):
            self._widths[n] = max(self._widths[n], len(cell))
        rest = [pair(k, v) for k, v in record.items() if k not in _SHOWN_FIRST]
        padded = [cell.ljust(self._widths[n]) for n, cell in enumerate(cells)]
        return "  ".join([*padded, " ".join(rest)]).rstrip()


class LogTail:
    """Reads whole lines from a log file as it grows, like ``tail -F``.

    A file that does not exist yet is waited for; one that shrank (truncated in place) is read
    again from the start; one replaced by a new file (rotation) is read to its end, then the new
    file from its start. A truncation that refills the file past the old position between two
    polls goes unnoticed, as with ``tail``.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: IO[bytes] | None = None
        self._ident: tuple[int, int] | None = None
        self._partial = b""

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> bool:
        try:
            self._file = self.path.open("rb")
        except FileNotFoundError:
            return False
        st = os.fstat(self._file.fileno())
        self._ident = (st.st_dev, st.st_ino)
        self._partial = b""
        return True

    def _drain(self, *, final: bool = False) -> list[str]:
        assert self._file is not None
        chunks = [self._partial]
        while chunk := self._file.read(_READ_SIZE):
            chunks.append(chunk)
        data = b"".join(chunks)
        *whole, self._partial = data.split(b"\n")
        if final and self._partial:
            whole.append(self._partial)
            self._partial = b""
        return [line.decode("utf-8", errors="replace") for line in whole]

    def poll(self) -> list[str]:
        """Every whole line appended since the last poll."""
        if self._file is None and not self._open():
            return []
        assert self._file is not None
        lines = self._drain()
        try:
            st = self.path.stat()
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._ident:
            lines += self._drain(final=True)  # the rest of the old file, then the new one
            self.close()
            if st is not None and self._open():
                lines += self._drain()
        elif st.st_size < self._file.tell():
            self._file.seek(0)
            self._partial = b""
            lines += self._drain()
        return lines
