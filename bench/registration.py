"""1 and 2: registering orders through the ledger against raw sqlite3 writing the same rows.

The baseline is the least code that writes the same rows: the same schema (created by opening a
`Ledger` on its file), the same pragmas (WAL, synchronous FULL, foreign keys, busy timeout), the
same orders rows and registration event rows, converted from the same Python values inside the
timed region. After timing, both files are compared row by row (creation times aside), so the
baseline cannot be faster by writing less.
"""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from bench._common import (
    REPO,
    Context,
    daemon_env,
    interleaved,
    median,
    orders,
    rate,
    say,
    sqlite_url,
    stopwatch,
)
from ledger import Ledger

#: What the ledger writes for a new order; the raw baseline writes the same.
_ORDER_SQL = (
    "INSERT INTO smsledger_orders (order_id, send_at, state, label, reason, cancel_attempts, "
    "check_attempts, created_at, updated_at) VALUES (?, ?, 'scheduled', NULL, 'registered', 0, 0, "
    "?, ?)"
)
#: A registration event has no details (the ledger may store SQL NULL or the JSON text 'null').
_EVENT_SQL = (
    "INSERT INTO smsledger_order_events (order_id, at, from_state, to_state, reason, details) "
    "VALUES (?, ?, NULL, 'scheduled', 'registered', NULL)"
)
BULK_REPEATS = 3


def _stamp(when: datetime) -> str:
    """A datetime as the ledger stores it: naive UTC text with microseconds."""
    return when.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def _raw_connection(path: Path) -> sqlite3.Connection:
    """A sqlite3 connection set up exactly as the ledger sets up its own."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _schema_file(path: Path) -> Path:
    """Create the ledger's schema in a new file by opening a Ledger on it."""
    Ledger(sqlite_url(path)).close()
    return path


def raw_bulk(path: Path, rows: Sequence[tuple[str, datetime]]) -> None:
    """The baseline of 1: both executemany calls in one immediate transaction."""
    conn = _raw_connection(path)
    try:
        now = _stamp(datetime.now(UTC))
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(_ORDER_SQL, [(oid, _stamp(when), now, now) for oid, when in rows])
        conn.executemany(_EVENT_SQL, [(oid, now) for oid, _ in rows])
        conn.execute("COMMIT")
    finally:
        conn.close()


def raw_one_by_one(path: Path, rows: Sequence[tuple[str, datetime]]) -> None:
    """The baseline of 2: one immediate transaction (order + event) per order."""
    conn = _raw_connection(path)
    try:
        for oid, when in rows:
            now = _stamp(datetime.now(UTC))
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_ORDER_SQL, (oid, _stamp(when), now, now))
            conn.execute(_EVENT_SQL, (oid, now))
            conn.execute("COMMIT")
    finally:
        conn.close()


def same_rows(a: Path, b: Path) -> bool:
    """Whether two ledger files hold the same orders and events (creation times aside)."""
    order_cols = "order_id, send_at, state, label, reason, cancel_attempts, check_attempts"
    event_cols = "order_id, from_state, to_state, reason, coalesce(details, 'null')"
    contents = []
    for path in (a, b):
        conn = sqlite3.connect(path)
        try:
            contents.append(
                (
                    conn.execute(
                        f"SELECT {order_cols} FROM smsledger_orders ORDER BY order_id"
                    ).fetchall(),
                    conn.execute(
                        f"SELECT {event_cols} FROM smsledger_order_events ORDER BY id"
                    ).fetchall(),
                )
            )
        finally:
            conn.close()
    return contents[0] == contents[1]


def _unconfigured_register_many(path: Path, n: int, now: datetime) -> float:
    """`register_many` timed in a fresh process that configured no logging."""
    done = subprocess.run(
        [sys.executable, "-m", "bench._unconfigured", str(path), str(n), now.isoformat()],
        cwd=REPO,
        env=daemon_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    found = re.search(r"^seconds=(\S+)$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"bench._unconfigured exited {done.returncode}: {done.stderr}")
    return float(found.group(1))


def bulk(ctx: Context) -> None:
    n = ctx.size.bulk
    say(
        f"register_many of {n:,} orders vs raw sqlite3 executemany, median of {BULK_REPEATS};"
        " the ledger with the JSON-lines log configured (this process) and with logging"
        " unconfigured (a fresh process)"
    )
    now = datetime.now(UTC)
    rows = orders(n, now=now)
    ours, bare, raw = [], [], []
    identical = True
    for i in range(BULK_REPEATS):
        folder = ctx.dir(f"bulk-{i}")
        raw_file = _schema_file(folder / "raw.db")
        with stopwatch() as t:
            raw_bulk(raw_file, rows)
        raw.append(t[0])
        ledger = Ledger(sqlite_url(folder / "ledger.db"))
        try:
            with stopwatch() as t:
                ledger.register_many(rows)
            ours.append(t[0])
        finally:
            ledger.close()
        bare.append(_unconfigured_register_many(folder / "unconfigured.db", n, now))
        identical = (
            identical
            and same_rows(folder / "ledger.db", raw_file)
            and same_rows(folder / "unconfigured.db", raw_file)
        )
        say(
            f"  run {i + 1}: ledger {ours[-1]:.3f} s (log configured),"
            f" {bare[-1]:.3f} s (logging unconfigured), raw {raw[-1]:.3f} s"
        )
    say(f"  same rows in all files: {'yes' if identical else 'NO'}")
    ctx.measured[("bulk", n)] = median(ours)
    for what, times in (("JSON-lines log configured", ours), ("logging unconfigured", bare)):
        ratio = median(raw) / median(times)
        ctx.figure(
            "1 bulk registration",
            f"register_many, {n:,} orders, {what}",
            f"{median(times):.2f} s ({rate(n, median(times))})",
            f"{median(raw):.2f} s ({rate(n, median(raw))}) raw executemany",
            ratio,
            ">= 0.50 of raw",
            ratio >= 0.5 and identical,
        )


def one_by_one(ctx: Context) -> None:
    n = ctx.size.one_by_one
    say(f"register, one transaction per order, {n:,} orders vs raw sqlite3 per-row commits")
    rows = orders(n)
    folder = ctx.dir("one-by-one")
    raw_file = _schema_file(folder / "raw.db")
    ledger = Ledger(sqlite_url(folder / "ledger.db"))
    try:
        raw, ours = interleaved(
            rows,
            lambda part: raw_one_by_one(raw_file, part),
            lambda part: [ledger.register(oid, when) for oid, when in part],
        )
    finally:
        ledger.close()
    identical = same_rows(folder / "ledger.db", raw_file)
    say(f"  same rows in both files: {'yes' if identical else 'NO'}")
    ratio = raw / ours
    ctx.measured[("one-by-one", n)] = ours
    ctx.figure(
        "2 one-by-one registration",
        f"register x {n:,}",
        f"{ours:.2f} s ({rate(n, ours)}, {ours / n * 1000:.2f} ms each)",
        f"{raw:.2f} s ({rate(n, raw)}, {raw / n * 1000:.2f} ms each) raw per-row commits",
        ratio,
        ">= 0.40 of raw",
        ratio >= 0.4 and identical,
    )
