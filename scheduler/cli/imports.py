"""Reading a campaign's orders for ``smsledger register --from``: CSV or JSON lines, all checked.

Pure: lines in, `ImportCheck` out (the zone and `now` are passed in). The format is told by the
content: a first non-blank line starting with ``{`` is JSON lines (one object per line:
``order_id``, ``send_at``, optional ``label``), anything else is CSV whose first line is a header
naming ``order_id``, ``send_at`` and optionally ``label``. Each line is checked with the ledger's
own rules (`check_order_id`, `check_label`, `check_future`) and times are read like every WHEN
(`parse_when`), so a file is refused for exactly what `register` would refuse.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from ledger import InvalidInput
from ledger.api import check_future, check_label, check_order_id
from scheduler.cli.times import WhenError, format_utc, parse_when

__all__ = ["COLUMNS", "ImportCheck", "ImportRow", "check_lines"]

#: The CSV header's columns and the JSON lines' keys; `label` may be left out.
COLUMNS = ("order_id", "send_at", "label")
_REQUIRED = frozenset({"order_id", "send_at"})


@dataclass(frozen=True, slots=True)
class ImportRow:
    """One good line: its number in the file and the order it registers."""

    line: int
    order_id: str
    send_at: datetime
    label: str | None


@dataclass
class ImportCheck:
    """Every line of a file, checked: the good rows and each bad line's number and problem."""

    format: str = "csv"
    rows: list[ImportRow] = field(default_factory=list)
    problems: list[tuple[int, str]] = field(default_factory=list)


def check_lines(
    lines: Iterable[str], zone: ZoneInfo, now: datetime, *, label: str | None = None
) -> ImportCheck:
    """Read and check every line; `label` is given to lines that carry none."""
    numbered = ((n, line.rstrip("\r\n")) for n, line in enumerate(lines, start=1))
    content = ((n, line) for n, line in numbered if line.strip())
    first = next(content, None)
    check = ImportCheck()
    if first is None:
        return check
    seen: dict[str, ImportRow] = {}
    if first[1].lstrip().startswith("{"):
        check.format = "jsonl"
        records = _json_records([first], content, check)
    else:
        records = _csv_records(first, content, check)
    for n, record in records:
        try:
            row = _row(n, record, zone, now, label)
        except (InvalidInput, WhenError) as exc:
            check.problems.append((n, str(exc)))
            continue
        earlier = seen.get(row.order_id)
        if earlier is not None and earlier.send_at != row.send_at:
            check.problems.append(
                (
                    n,
                    f"order {row.order_id} is on line {earlier.line} for "
                    f"{format_utc(earlier.send_at)} and here for {format_utc(row.send_at)}",
                )
            )
            continue
        seen.setdefault(row.order_id, row)
        check.rows.append(row)
    return check


def _json_records(
    head: list[tuple[int, str]], rest: Iterator[tuple[int, str]], check: ImportCheck
) -> Iterator[tuple[int, dict[str, object]]]:
    for n, line in [*head, *rest]:
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            check.problems.append((n, f"not JSON ({exc.msg} at column {exc.colno})"))
            continue
        if not isinstance(value, dict):
            check.problems.append((n, f"not a JSON object but {type(value).__name__}"))
            continue
        yield n, value


def _csv_records(
    head: tuple[int, str], rest: Iterator[tuple[int, str]], check: ImportCheck
) -> Iterator[tuple[int, dict[str, object]]]:
    header = [name.strip().lower() for name in next(csv.reader([head[1]]))]
    unknown = [name for name in header if name not in COLUMNS]
    missing = [name for name in COLUMNS if name in _REQUIRED and name not in header]
    if unknown or missing or len(set(header)) != len(header):
        why = (
            f"unknown column(s) {', '.join(unknown)}"
            if unknown
            else f"missing column(s) {', '.join(missing)}"
            if missing
            else "a column is named twice"
        )
        check.problems.append(
            (head[0], f"the CSV header must name {', '.join(COLUMNS)} (label optional): {why}")
        )
        return
    for n, line in rest:
        fields = next(csv.reader([line]))
        if len(fields) != len(header):
            check.problems.append((n, f"{len(fields)} field(s), the header names {len(header)}"))
            continue
        yield n, dict(zip(header, fields, strict=True))


def _row(
    n: int, record: dict[str, object], zone: ZoneInfo, now: datetime, default: str | None
) -> ImportRow:
    unknown = sorted(set(record) - set(COLUMNS))
    if unknown:
        raise InvalidInput(f"unknown key(s) {', '.join(unknown)}; keys are {', '.join(COLUMNS)}")
    missing = [key for key in COLUMNS if key in _REQUIRED and key not in record]
    if missing:
        raise InvalidInput(f"missing {', '.join(missing)}")
    order_id = check_order_id(record["order_id"])
    raw_time = record["send_at"]
    if not isinstance(raw_time, str):
        raise InvalidInput(f"send_at must be text, got {type(raw_time).__name__}")
    send_at = parse_when(raw_time, zone)
    check_future(order_id, send_at, now)
    raw_label = record.get("label")
    if raw_label is not None and not isinstance(raw_label, str):
        raise InvalidInput(f"label must be text, got {type(raw_label).__name__}")
    label = check_label(raw_label or None)
    return ImportRow(n, order_id, send_at, label if label is not None else default)
