"""PostgreSQL (``--postgres-url``): bulk registration against psycopg, and pass cost 10k vs big.

Everything happens in schemas of its own (``smsledger_bench_*``, dropped before and after), chosen
through the URL's ``options=-csearch_path=...``, so the database's other tables are left alone.

- Bulk: `register_many` against psycopg writing the same rows into a schema the ledger created:
  ``executemany`` (psycopg 3 pipelines it) and ``COPY``, each in one transaction.
- Pass: `run --once` over a small and a big ledger, timed from the log as for SQLite, with the
  ``EXPLAIN`` of every statement the pass runs (after ``ANALYZE``, as autovacuum would leave it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from bench._common import (
    FIRST_ID,
    Context,
    daemon_argv,
    median,
    once_pass_seconds,
    orders,
    rate,
    run_child,
    say,
    stopwatch,
    write_config,
)
from ledger import Ledger
from scheduler.client import IletiMerkeziClient
from scheduler.daemon import Daemon

PREFIX = "smsledger_bench_"
BUILD_BATCH = 50_000
BULK_REPEATS = 3
PASS_GOAL = 1.5


def _psycopg() -> Any:
    """psycopg, imported only when asked for: it is the optional ``postgres`` extra."""
    import psycopg  # noqa: PLC0415 - optional dependency

    return psycopg


def _libpq(url: str) -> str:
    """The SQLAlchemy URL as a libpq conninfo URL (no driver suffix)."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _in_schema(url: str, schema: str) -> str:
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}')}"


@contextmanager
def _schemas(url: str, *names: str) -> Iterator[list[str]]:
    """Fresh empty schemas, dropped afterwards."""
    psycopg = _psycopg()
    full = [PREFIX + name for name in names]
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        for schema in full:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield full
    finally:
        with psycopg.connect(_libpq(url), autocommit=True) as conn:
            for schema in full:
                conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


_ORDER_COLS = (
    "order_id, send_at, state, label, reason, cancel_attempts, check_attempts, created_at, "
    "updated_at"
)
_EVENT_COLS = "order_id, at, from_state, to_state, reason, details"


def _naive(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(tzinfo=None)


def raw_bulk(url: str, schema: str, rows: Sequence[tuple[str, datetime]], *, copy: bool) -> None:
    """The baseline: the same orders and events rows through psycopg, one transaction."""
    psycopg = _psycopg()
    with psycopg.connect(_libpq(url), options=f"-csearch_path={schema}") as conn:
        now = _naive(datetime.now(UTC))
        order_rows = [
            (oid, _naive(when), "scheduled", None, "registered", 0, 0, now, now)
            for oid, when in rows
        ]
        event_rows = [(oid, now, None, "scheduled", "registered", None) for oid, _ in rows]
        with conn.cursor() as cur:
            if copy:
                with cur.copy(f"COPY orders ({_ORDER_COLS}) FROM STDIN") as out:
                    for order_row in order_rows:
                        out.write_row(order_row)
                with cur.copy(f"COPY order_events ({_EVENT_COLS}) FROM STDIN") as out:
                    for event_row in event_rows:
                        out.write_row(event_row)
            else:
                cur.executemany(
                    f"INSERT INTO orders ({_ORDER_COLS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
                    "%s)",
                    order_rows,
                )
                cur.executemany(
                    f"INSERT INTO order_events ({_EVENT_COLS}) VALUES (%s, %s, %s, %s, %s, %s)",
                    event_rows,
                )
        conn.commit()


def _contents(url: str, schema: str) -> Any:
    psycopg = _psycopg()
    with psycopg.connect(_libpq(url), options=f"-csearch_path={schema}") as conn:
        return (
            conn.execute(
                "SELECT order_id, send_at, state, label, reason, cancel_attempts, check_attempts "
                "FROM orders ORDER BY order_id"
            ).fetchall(),
            conn.execute(
                "SELECT order_id, from_state, to_state, reason, coalesce(details::text, 'null') "
                "FROM order_events ORDER BY id"
            ).fetchall(),
        )


def bulk(ctx: Context, url: str) -> None:
    n = ctx.size.bulk
    rows = orders(n)
    times: dict[str, list[float]] = {"ledger": [], "executemany": [], "copy": []}
    identical = True
    say(
        f"  register_many of {n:,} orders vs psycopg executemany and COPY, median of {BULK_REPEATS}"
    )
    for _ in range(BULK_REPEATS):
        with _schemas(url, "ledger", "executemany", "copy") as (ours, many, copy):
            for schema in (many, copy):
                Ledger(_in_schema(url, schema)).close()  # the ledger's own schema
            with stopwatch() as t:
                raw_bulk(url, many, rows, copy=False)
            times["executemany"].append(t[0])
            with stopwatch() as t:
                raw_bulk(url, copy, rows, copy=True)
            times["copy"].append(t[0])
            ledger = Ledger(_in_schema(url, ours))
            try:
                with stopwatch() as t:
                    ledger.register_many(rows)
                times["ledger"].append(t[0])
            finally:
                ledger.close()
            mine = _contents(url, ours)
            identical = identical and mine == _contents(url, many) == _contents(url, copy)
    say(f"  same rows in all three schemas: {'yes' if identical else 'NO'}")
    ours_t = median(times["ledger"])
    for name in ("executemany", "copy"):
        base = median(times[name])
        ctx.figure(
            "PostgreSQL bulk registration",
            f"register_many, {n:,} orders vs psycopg {name}",
            f"{ours_t:.2f} s ({rate(n, ours_t)})",
            f"{base:.2f} s ({rate(n, base)})",
            base / ours_t,
            ">= 0.50 of raw (as SQLite)" if name == "executemany" else "",
            (base / ours_t >= 0.5 and identical) if name == "executemany" else None,
        )


def _build(url: str, n: int) -> None:
    now = datetime.now(UTC)
    ledger = Ledger(url)
    try:
        for start in range(0, n, BUILD_BATCH):
            ledger.register_many(
                orders(min(BUILD_BATCH, n - start), first=FIRST_ID + start, now=now)
            )
        with ledger.store.engine.begin() as conn:
            conn.exec_driver_sql("ANALYZE orders")
            conn.exec_driver_sql("ANALYZE order_events")
    finally:
        ledger.close()


def _plans(url: str) -> list[tuple[str, list[str]]]:
    seen: list[tuple[str, Any]] = []
    ledger = Ledger(url)

    @sa.event.listens_for(ledger.store.engine, "before_cursor_execute")
    def _record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "orders" in statement:  # not BEGIN, COMMIT, PRAGMA or schema checks
            seen.append((statement, parameters))

    client = IletiMerkeziClient("http://127.0.0.1:9", "k", "h", timeout=2.0)
    try:
        Daemon(ledger, client).run_pass(wait=True)
        sa.event.remove(ledger.store.engine, "before_cursor_execute", _record)
        plans = []
        done: set[str] = set()
        with ledger.store.engine.connect() as conn:
            for statement, parameters in seen:
                if statement in done:
                    continue
                done.add(statement)
                rows = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).fetchall()
                plans.append((" ".join(statement.split()), [r[0] for r in rows]))
            conn.rollback()
    finally:
        client.close()
        ledger.close()
    return plans


def pass_cost(ctx: Context, url: str) -> None:
    small_n, big_n = ctx.size.pass_small, ctx.size.pass_big
    folder = ctx.dir("postgres-pass")
    with _schemas(url, "small", "big") as (small, big):
        urls = {"small": _in_schema(url, small), "big": _in_schema(url, big)}
        for name, n in (("small", small_n), ("big", big_n)):
            with stopwatch() as t:
                _build(urls[name], n)
            say(f"  built the {n:,}-order ledger in {t[0]:.1f} s")
        passes: dict[str, list[float]] = {"small": [], "big": []}
        rss: dict[str, int] = {"small": 0, "big": 0}
        for i in range(ctx.size.pass_repeats):
            for name in ("small", "big"):
                log = folder / f"{name}-{i}.log.jsonl"
                config = write_config(folder / f"{name}.toml", ledger_url=urls[name], log_path=log)
                child = run_child(daemon_argv(config, once=True))
                if child.returncode != 0:
                    raise RuntimeError(f"run --once exited {child.returncode}: {child.stderr}")
                passes[name].append(once_pass_seconds(log))
                rss[name] = max(rss[name], child.max_rss_kib)
        for name in ("small", "big"):
            say(
                f"  {name}: pass {median(passes[name]) * 1000:.1f} ms (runs: "
                + ", ".join(f"{p * 1000:.1f}" for p in passes[name])
                + f"), peak RSS {rss[name] / 1024:.1f} MiB"
            )
        ratio = median(passes["big"]) / median(passes["small"])
        ctx.figure(
            "PostgreSQL pass cost",
            f"`run --once` pass, {big_n:,} orders",
            f"{median(passes['big']) * 1000:.1f} ms (peak RSS {rss['big'] / 1024:.0f} MiB)",
            f"{median(passes['small']) * 1000:.1f} ms at {small_n:,} orders",
            ratio,
            f"<= {PASS_GOAL}x",
            ratio <= PASS_GOAL,
        )
        say(f"\n  query plans of one pass over the {big_n:,}-order ledger:")
        for statement, plan in _plans(urls["big"]):
            say(f"\n  {statement}")
            for line in plan:
                say(f"    {line}")


def run(ctx: Context) -> None:
    url = ctx.postgres_url
    if url is None:
        say("  skipped: no --postgres-url")
        return
    try:
        with _schemas(url, "probe") as (probe,):
            Ledger(_in_schema(url, probe)).close()
    except Exception as exc:
        say(f"  skipped: the ledger cannot open {url}: {type(exc).__name__}: {exc}")
        ctx.figure("PostgreSQL", "ledger on PostgreSQL", "not available", "", None, "", None)
        return
    bulk(ctx, url)
    pass_cost(ctx, url)
