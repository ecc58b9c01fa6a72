"""9: stopping a campaign: `request_cancel_many(label=...)` against raw SQL doing the same writes.

One ledger is built with `Size.bulk` orders (100,000 at full size) under the label ``spring``, a
day or more ahead (every one is requested, none inside a margin), beside a tenth as many under
another label. Each run copies it twice: on one copy `Ledger.request_cancel_many(label="spring")`
runs in this process (the JSON-lines log configured, as `bench.run` sets it up); on the other the
baseline, raw sqlite3 with the ledger's pragmas, does the same writes in one transaction: an
``INSERT ... SELECT`` of the history rows (``seconds_left`` computed in SQL) and an ``UPDATE ...
WHERE label = ?``. The baseline decides nothing per order (no margins, no per-order result); it
is the floor a set-based write reaches. Both copies must end with the same states and the same
history rows (times aside).
"""

from __future__ import annotations

import shutil
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench._common import FIRST_ID, Context, median, rate, say, sqlite_url, stopwatch
from bench.registration import _raw_connection, _stamp
from ledger import Ledger

GOAL = 0.5
REPEATS = 3
LABEL = "spring"

_RAW_EVENTS = """
INSERT INTO smsledger_order_events (order_id, at, from_state, to_state, reason, details)
SELECT order_id, :now, 'scheduled', 'cancel_requested', 'cancel requested',
       json_object('seconds_left', round((julianday(send_at) - julianday(:now)) * 86400.0, 3))
FROM smsledger_orders WHERE label = :label AND state = 'scheduled'
"""
_RAW_ORDERS = """
UPDATE smsledger_orders
SET state = 'cancel_requested', reason = 'cancel requested', updated_at = :now,
    cancel_requested_at = :now, claim_owner = NULL, claim_expires_at = NULL
WHERE label = :label AND state = 'scheduled'
"""


def build(path: Path, n: int) -> None:
    """The campaign (`n` orders labelled `LABEL`) and a tenth as many of another label."""
    start = datetime.now(UTC) + timedelta(days=1)
    ledger = Ledger(sqlite_url(path))
    try:
        for first, count, label in ((0, n, LABEL), (n, max(1, n // 10), "other")):
            ledger.register_many(
                [
                    (str(FIRST_ID + first + i), start + timedelta(seconds=i), label)
                    for i in range(count)
                ]
            )
    finally:
        ledger.close()
    conn = sqlite3.connect(path)  # fold the WAL into the file, so a copy is the whole ledger
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def raw_cancel(path: Path) -> int:
    """The baseline: the campaign's history rows and updates in one immediate transaction."""
    conn = _raw_connection(path)
    try:
        now = _stamp(datetime.now(UTC))
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_RAW_EVENTS, {"now": now, "label": LABEL})
        done = conn.execute(_RAW_ORDERS, {"now": now, "label": LABEL}).rowcount
        conn.execute("COMMIT")
        return done
    finally:
        conn.close()


def raw_cancel_with_results(path: Path) -> int:
    """The baseline plus what a per-order answer needs: the campaign's rows read back, one
    Python tuple each (``cancel --json`` lists every order's outcome)."""
    done = raw_cancel(path)
    conn = _raw_connection(path)
    try:
        rows = conn.execute(
            "SELECT order_id, state, send_at FROM smsledger_orders WHERE label = ?"
            " ORDER BY order_id",
            (LABEL,),
        ).fetchall()
        results = [(oid, state, datetime.fromisoformat(at)) for oid, state, at in rows]
    finally:
        conn.close()
    return done if len(results) == done else -1


def contents(path: Path) -> tuple[list[tuple[str, ...]], list[tuple[str, ...]]]:
    """States by order and history rows (times and seconds left aside), to compare two copies."""
    conn = sqlite3.connect(path)
    try:
        states = conn.execute(
            "SELECT order_id, state, reason FROM smsledger_orders ORDER BY order_id"
        ).fetchall()
        events = conn.execute(
            "SELECT order_id, coalesce(from_state, ''), to_state, reason,"
            " json_type(details, '$.seconds_left') FROM smsledger_order_events"
            " ORDER BY order_id, id"
        ).fetchall()
        return states, events
    finally:
        conn.close()


def run(ctx: Context) -> None:
    n = ctx.size.bulk
    folder = ctx.dir("bulk-cancel")
    master = folder / "master.db"
    with stopwatch() as built:
        build(master, n)
    say(f"  built a ledger of {n:,} + {max(1, n // 10):,} orders in {built[0]:.1f} s")
    ours: list[float] = []
    raw: list[float] = []
    raw_read: list[float] = []
    same = True
    for i in range(REPEATS):
        ours_file, raw_file = folder / f"ours-{i}.db", folder / f"raw-{i}.db"
        read_file = folder / f"raw-read-{i}.db"
        for copy in (ours_file, raw_file, read_file):
            shutil.copy(master, copy)
        with stopwatch() as t:
            done = raw_cancel(raw_file)
        raw.append(t[0])
        with stopwatch() as t:
            read_done = raw_cancel_with_results(read_file)
        raw_read.append(t[0])
        ledger = Ledger(sqlite_url(ours_file))
        try:
            with stopwatch() as t:
                summary = ledger.request_cancel_many(label=LABEL)
            ours.append(t[0])
        finally:
            ledger.close()
        same = (
            same
            and done == read_done == n == summary.requested
            and contents(ours_file) == contents(raw_file)
        )
        say(
            f"  run {i + 1}: request_cancel_many {ours[-1]:.3f} s, raw {raw[-1]:.3f} s,"
            f" raw reading the rows back {raw_read[-1]:.3f} s"
        )
        for copy in (ours_file, raw_file, read_file):
            copy.unlink()
    say(f"  same states and history rows in both copies: {'yes' if same else 'NO'}")
    ratio = median(raw) / median(ours)
    ctx.figure(
        "9 bulk cancel",
        f"request_cancel_many(label=...), {n:,} orders",
        f"{median(ours):.2f} s ({rate(n, median(ours))})",
        f"{median(raw):.2f} s ({rate(n, median(raw))}) raw UPDATE + INSERT ... SELECT",
        ratio,
        f">= {GOAL} of raw",
        ratio >= GOAL and same,
    )
    ctx.figure(
        "9 bulk cancel",
        f"request_cancel_many(label=...), {n:,} orders, vs raw with per-order results",
        f"{median(ours):.2f} s",
        f"{median(raw_read):.2f} s raw, then the campaign's rows read back into Python",
        median(raw_read) / median(ours),
        "",
        None,
    )
