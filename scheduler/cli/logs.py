"""Reading smsledger's JSON-lines log for `smsledger logs`: filter, format, follow.

Every line the log writer produces is one JSON object with ``timestamp`` (ISO 8601 UTC), ``level``
and ``event``; anything else on a line of its own is "not JSON" and is skipped by the caller.
`LogTail` reads a file that may not exist yet, grow, be truncated or be replaced (rotation) and
hands back only whole lines.
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from scheduler.cli.output import escape, pair
from scheduler.cli.times import format_local

if TYPE_CHECKING:  # the models import SQLAlchemy, which reading a log does without
    from ledger.models import Event

__all__ = [
    "LEVELS",
    "LineFormatter",
    "LogFilter",
    "LogTail",
    "parse_record",
    "read_lines",
    "record_time",
    "rotated_logs",
    "with_event",
    "with_history",
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


#: How far past a ledger event `with_event` looks for the log's own line of it.
_EVENT_LOOKAHEAD = timedelta(seconds=60)
#: A log line of a state change is written just after its commit; this much before the event's
#: time still counts as its line (clocks of one host, rounding).
_EVENT_SLACK = timedelta(seconds=1)


def with_history(lines: Iterable[str], events: Iterable[Event]) -> Iterator[str]:
    """`lines` with an order's state changes read from the ledger, where the log has no line.

    Bulk calls log one summary line, not one per order: `register_many` an
    ``orders_registered`` line per call, a campaign's cancel an ``orders_state_changed`` line
    per batch. The ledger's history holds every order's event; each one the log lacks is put in
    as the ``order_state_changed`` line a one-order call would have written (marked ``"source":
    "ledger"``), before the first line logged after it (`with_event`). Meant for one order's
    lines (``logs --order``): each event looks through the lines once.
    """
    merged: Iterable[str] = lines
    for event in sorted(events, key=lambda e: e.at):
        merged = with_event(merged, event)
    return iter(merged)


def with_event(lines: Iterable[str], event: Event) -> Iterator[str]:
    """`lines` with one ledger event, unless the log has its line (see `with_history`).

    Lines stream through: only those within `_EVENT_LOOKAHEAD` after the event are held back,
    to see whether the log has the event itself.
    """
    at = event.at.astimezone(UTC)
    details = {"details": dict(event.details)} if event.details else {}
    text = json.dumps(
        {
            "timestamp": at.isoformat().replace("+00:00", "Z"),
            "level": "info",
            "event": "order_state_changed",
            "order_id": event.order_id,
            "from_state": event.from_state.value if event.from_state else None,
            "to_state": event.to_state.value,
            "reason": event.reason,
            **details,
            "source": "ledger",
        }
    )
    held: list[str] = []
    settled = False  # the event is either shown already or known to be in the log
    for line in lines:
        if settled:
            yield line
            continue
        parsed = parse_record(line)
        when = record_time(parsed) if parsed is not None else None
        if parsed is not None and _is_logged(parsed, event, when):
            settled = True
            yield from held
            yield line
            continue
        if not held and (when is None or when <= at):
            yield line
        elif when is None or when <= at + _EVENT_LOOKAHEAD:
            held.append(line)
        else:
            settled = True
            yield text
            yield from held
            yield line
    if not settled:
        yield text
        yield from held


def _is_logged(record: dict[str, Any], event: Event, when: datetime | None) -> bool:
    """Whether `record` is the log's own line of `event`."""
    return (
        record.get("event") == "order_state_changed"
        and str(record.get("order_id")) == event.order_id
        and record.get("from_state") == (event.from_state.value if event.from_state else None)
        and record.get("to_state") == event.to_state.value
        and (when is None or when >= event.at - _EVENT_SLACK)
    )


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

    def _drain(self, *, final: bool = False) -> Iterator[str]:
        """The whole lines from the read position to the end, one read-sized chunk at a time."""
        assert self._file is not None
        while chunk := self._file.read(_READ_SIZE):
            *whole, self._partial = (self._partial + chunk).split(b"\n")
            for line in whole:
                yield line.decode("utf-8", errors="replace")
        if final and self._partial:
            yield self._partial.decode("utf-8", errors="replace")
            self._partial = b""

    def lines(self) -> Iterator[str]:
        """Every whole line appended since the last read, as it is read: memory stays flat
        however much there is (a 100 MB log is never held at once)."""
        if self._file is None and not self._open():
            return
        assert self._file is not None
        yield from self._drain()
        try:
            st = self.path.stat()
        except FileNotFoundError:
            st = None
        if st is None or (st.st_dev, st.st_ino) != self._ident:
            yield from self._drain(final=True)  # the rest of the old file, then the new one
            self.close()
            if st is not None and self._open():
                yield from self._drain()
        elif st.st_size < self._file.tell():
            self._file.seek(0)
            self._partial = b""
            yield from self._drain()

    def poll(self) -> list[str]:
        """Every whole line appended since the last poll."""
        return list(self.lines())


def rotated_logs(path: str | os.PathLike[str]) -> list[Path]:
    """The rotated siblings of a log, oldest first: ``log.3.gz``, ``log.2.gz``, ``log.1``
    (logrotate's numbering, compressed or not)."""
    log = Path(path)
    pattern = re.compile(rf"{re.escape(log.name)}\.(\d+)(\.gz)?")
    found = []
    try:
        siblings = list(log.parent.iterdir())
    except OSError:
        return []
    for sibling in siblings:
        match = pattern.fullmatch(sibling.name)
        if match and sibling.is_file():
            found.append((int(match[1]), sibling))
    return [p for _, p in sorted(found, key=lambda item: -item[0])]


def read_lines(path: Path) -> Iterator[str]:
    """The lines of a whole (rotated) log file, ``.gz`` decompressed as it is read."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as packed:
            yield from _decoded(packed)
    else:
        with path.open("rb") as plain:
            yield from _decoded(plain)


def _decoded(file: Iterable[bytes]) -> Iterator[str]:
    for raw in file:
        yield raw.rstrip(b"\n").decode("utf-8", errors="replace")
