"""``smsledger logs``: read, filter and follow the JSON-lines log, streaming.

Its own module, importing neither the daemon nor the ledger's models, because `logs | head` and
`logs --follow` should answer at once: the ledger is opened only for ``--order``, to add an
order's state changes where the log has no line of them (`with_history`).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ledger._clock import utcnow
from ledger.errors import LedgerError
from scheduler.cli.context import POLL_SECONDS, Context, open_ledger
from scheduler.cli.exits import EXIT_OK, UsageError
from scheduler.cli.logs import (
    LEVELS,
    LineFormatter,
    LogFilter,
    LogTail,
    parse_record,
    read_lines,
    rotated_logs,
    with_history,
)
from scheduler.cli.output import escape_json, say, say_error
from scheduler.cli.times import WhenError, parse_since

if TYPE_CHECKING:
    from ledger.models import Event

__all__ = ["run_logs"]

#: `logs` sizes its columns to this many lines at a time: aligned, yet printed as it reads.
_LOG_WINDOW = 50


def run_logs(args: argparse.Namespace, ctx: Context) -> int:
    """``smsledger logs``: print the log's matching lines as they are read; follow with -f."""
    config = ctx.config
    if config.log.path == "-":
        raise UsageError(
            "log.path is '-' (the log goes to stderr), so there is no log file to read"
        )
    level = None
    if args.level is not None:
        level = args.level.lower()
        if level not in LEVELS:
            raise UsageError(
                f"--level: unknown level {args.level!r}; levels are: {', '.join(LEVELS)}"
            )
    since = None
    if args.since is not None:
        try:
            since = parse_since(args.since, config.zone, utcnow())
        except WhenError as exc:
            raise UsageError(f"--since: {exc}") from None
    reader = _LogPrinter(
        LogFilter(order=args.order, event=args.event, level=level, since=since),
        LineFormatter(config.zone),
        raw=args.json,
    )
    path = Path(config.log.path).expanduser()
    tail = LogTail(path)
    try:
        rotated = rotated_logs(path) if args.include_rotated else []
        if not args.follow and not path.exists() and not rotated:
            print(f"smsledger: no log file at {path} yet: nothing has been logged", file=sys.stderr)
            return EXIT_OK
        reader.show(_every_line(rotated, tail), history=_ledger_history(ctx, args.order))
        if not args.follow:
            if not reader.shown and not args.json:
                print(f"smsledger: no matching log events in {path}", file=sys.stderr)
            return EXIT_OK
        while True:
            time.sleep(POLL_SECONDS)
            reader.show(tail.lines())
    finally:
        tail.close()
        if reader.skipped:
            print(
                f"smsledger: skipped {reader.skipped} line(s) of {path} that are not JSON",
                file=sys.stderr,
            )


def _ledger_history(ctx: Context, order_id: str | None) -> list[Event]:
    """For ``logs --order``: the order's history from the ledger, to show the state changes the
    log has no line of (`with_history`); none without a ledger or such an order."""
    if order_id is None:
        return []
    try:
        with open_ledger(ctx, must_exist=True) as ledger:
            return ledger.history(order_id)
    except LedgerError:
        return []


def _every_line(rotated: list[Path], tail: LogTail) -> Iterator[str]:
    """The rotated logs oldest first, then the live one, streamed."""
    for older in rotated:
        try:
            yield from read_lines(older)
        except (OSError, EOFError) as exc:  # a damaged .gz: say so, read the others
            say_error(f"cannot read {older}: {exc}")
    yield from tail.lines()


@dataclass
class _LogPrinter:
    """Filters and prints log lines, counting the ones that are not JSON objects."""

    filter: LogFilter
    formatter: LineFormatter
    raw: bool
    shown: int = 0
    skipped: int = 0

    def show(self, lines: Iterable[str], history: Sequence[Event] = ()) -> None:
        """Print the matching lines as they are read, `_LOG_WINDOW` at a time: columns are sized
        to each window (and only grow), so memory stays flat and the first lines come at once.

        `history`: ledger events to put in where the log has no line of them (`with_history`),
        merged into the matching lines only (one order's, with ``--order``), so a big log is
        still parsed once.
        """
        matching = self._matching(lines)
        if history:
            merged = with_history((line for line, _ in matching), history)
            matching = ((line, parse_record(line)) for line in merged)
        picked: list[tuple[str, dict[str, object]]] = []
        for line, record in matching:
            if record is not None and self.filter.matches(record):  # ledger lines too
                picked.append((line, record))
                if len(picked) >= _LOG_WINDOW:
                    self._print(picked)
                    picked = []
        self._print(picked)

    def _matching(self, lines: Iterable[str]) -> Iterator[tuple[str, dict[str, Any] | None]]:
        for line in lines:
            if not line.strip():
                continue
            record = parse_record(line)
            if record is None:
                self.skipped += 1
            elif self.filter.matches(record):
                yield line, record

    def _print(self, picked: list[tuple[str, dict[str, object]]]) -> None:
        if not picked:
            return
        if not self.raw:
            self.formatter.fit([record for _, record in picked])
        out = [
            escape_json(line) if self.raw else self.formatter.format(record)
            for line, record in picked
        ]
        self.shown += len(out)
        say(out)
