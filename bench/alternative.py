"""3: what a user would write without smsledger, one APScheduler 3 date job per order.

::

    scheduler = BackgroundScheduler(jobstores={"default": SQLAlchemyJobStore(url="sqlite:///...")})
    scheduler.add_job(cancel_order, "date", run_date=send_at, id=order_id, args=[order_id])

APScheduler 3 has no bulk insert: every `add_job` is its own transaction, and jobs added before
`start()` are written one by one when it starts. So "bulk" here is that path (jobs added, then
`start()`), measured on fewer orders than 1 and extrapolated as a rate; "one by one" adds jobs to a
running scheduler. Two job stores: the URL as a user writes it (SQLite's default rollback journal,
synchronous FULL: durable, several fsyncs per commit), and the same engine with the ledger's
pragmas (WAL, synchronous FULL), so the gap is not only the journal mode.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler

from bench._common import Context, orders, rate, say, sqlite_url, stopwatch
from ledger import Ledger

#: "Far ahead", in numbers: ten times the rate in bulk, twice one by one (both fsync-bound there).
BULK_GOAL = 10.0
ONE_GOAL = 2.0


def cancel_order(order_id: str) -> None:
    """The job a user would schedule; never runs here (every order is a day ahead)."""


def _store(path: Path, *, wal: bool) -> SQLAlchemyJobStore:
    if not wal:
        return SQLAlchemyJobStore(url=sqlite_url(path))
    engine = sa.create_engine(sqlite_url(path))

    @sa.event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.close()

    return SQLAlchemyJobStore(engine=engine)


def _jobs_in(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT count(*) FROM apscheduler_jobs").fetchone()[0])
    finally:
        conn.close()


def aps_before_start(path: Path, rows: Sequence[tuple[str, datetime]], *, wal: bool) -> float:
    """Add every job to a scheduler not yet started, then start it; seconds until started."""
    scheduler = BackgroundScheduler(jobstores={"default": _store(path, wal=wal)}, timezone=UTC)
    try:
        with stopwatch() as t:
            for oid, when in rows:
                scheduler.add_job(cancel_order, "date", run_date=when, id=oid, args=[oid])
            scheduler.start()
    finally:
        scheduler.shutdown(wait=True)
    if _jobs_in(path) != len(rows):
        raise RuntimeError(f"APScheduler stored {_jobs_in(path)} jobs, not {len(rows)}")
    return t[0]


def aps_running(path: Path, rows: Sequence[tuple[str, datetime]], *, wal: bool) -> float:
    """Add the jobs one by one to a running scheduler; seconds for all the adds."""
    scheduler = BackgroundScheduler(jobstores={"default": _store(path, wal=wal)}, timezone=UTC)
    scheduler.start()
    try:
        with stopwatch() as t:
            for oid, when in rows:
                scheduler.add_job(cancel_order, "date", run_date=when, id=oid, args=[oid])
    finally:
        scheduler.shutdown(wait=True)
    if _jobs_in(path) != len(rows):
        raise RuntimeError(f"APScheduler stored {_jobs_in(path)} jobs, not {len(rows)}")
    return t[0]


def _ours_bulk(ctx: Context, n: int) -> float:
    known = ctx.measured.get(("bulk", n))
    if known is not None:
        say(f"  register_many of {n:,}: {known:.3f} s (median of benchmark 1)")
        return known
    ledger = Ledger(sqlite_url(ctx.dir("aps-ours-bulk") / "ledger.db"))
    try:
        with stopwatch() as t:
            ledger.register_many(orders(n))
    finally:
        ledger.close()
    say(f"  register_many of {n:,}: {t[0]:.3f} s")
    return t[0]


def _ours_one_by_one(ctx: Context, n: int) -> float:
    known = ctx.measured.get(("one-by-one", n))
    if known is not None:
        say(f"  register x {n:,}: {known:.3f} s (benchmark 2)")
        return known
    ledger = Ledger(sqlite_url(ctx.dir("aps-ours-one") / "ledger.db"))
    try:
        with stopwatch() as t:
            for oid, when in orders(n):
                ledger.register(oid, when)
    finally:
        ledger.close()
    say(f"  register x {n:,}: {t[0]:.3f} s")
    return t[0]


def run(ctx: Context) -> None:
    size = ctx.size
    bulk_n, aps_bulk_n, one_n = size.bulk, size.aps_bulk, size.aps_one
    ours_bulk = _ours_bulk(ctx, bulk_n)
    ours_one = _ours_one_by_one(ctx, one_n)
    for wal in (False, True):
        store = "WAL + synchronous FULL" if wal else "default sqlite URL"
        folder = ctx.dir(f"aps-{'wal' if wal else 'default'}")
        before = aps_before_start(folder / "bulk.db", orders(aps_bulk_n), wal=wal)
        projected = before / aps_bulk_n * bulk_n
        say(
            f"  APScheduler ({store}), {aps_bulk_n:,} jobs added before start(): {before:.2f} s"
            f" -> {bulk_n:,} would take ~{projected:.0f} s"
        )
        ctx.figure(
            "3 vs APScheduler, bulk",
            f"register_many {bulk_n:,} vs APScheduler jobs ({store})",
            f"{ours_bulk:.2f} s ({rate(bulk_n, ours_bulk)})",
            f"~{projected:.0f} s ({rate(aps_bulk_n, before)}; measured on {aps_bulk_n:,} jobs, "
            "extrapolated)",
            projected / ours_bulk,
            f"far ahead (>= {BULK_GOAL:g}x)",
            projected / ours_bulk >= BULK_GOAL,
        )
        running = aps_running(folder / "one.db", orders(one_n), wal=wal)
        say(f"  APScheduler ({store}), {one_n:,} add_job on a running scheduler: {running:.2f} s")
        # One durable commit per order either way: with WAL both wait on the same fsync, so the
        # goal applies to the job store as users write it; the WAL row is there to show that.
        ctx.figure(
            "3 vs APScheduler, one by one",
            f"register x {one_n:,} vs add_job x {one_n:,} ({store})",
            f"{ours_one:.2f} s ({rate(one_n, ours_one)})",
            f"{running:.2f} s ({rate(one_n, running)})",
            running / ours_one,
            "" if wal else f"far ahead (>= {ONE_GOAL:g}x)",
            None if wal else running / ours_one >= ONE_GOAL,
        )
