"""PostgreSQL (``--postgres-url``): figures 1-5 and 9 of the SQLite run, against psycopg.

Everything happens in schemas of its own (``smsledger_bench_<random>_*``, dropped afterwards),
chosen through the URL's ``options=-csearch_path=...``, so the database's other tables are left
alone and two runs against one server do not meet.

- Bulk: `register_many` against psycopg writing the same rows into a schema the ledger created:
  ``executemany`` (psycopg 3 pipelines it) and ``COPY``, each in one transaction.
- One by one: `register` per order against psycopg inserting the order and its event and
  committing, per order (halves interleaved, as for SQLite).
- Pass: `run --once` over a small and a big ledger (written with COPY), timed from the log as for
  SQLite, with the ``EXPLAIN`` of every statement the pass runs (after ``ANALYZE``, as autovacuum
  would leave it).
- Bulk cancel: `request_cancel_many(label=...)` against psycopg doing the same writes in one
  transaction (``INSERT ... SELECT`` of the history rows, ``UPDATE ... WHERE label``).
- Cancel throughput: bench.cancels at the goal's concurrency with the daemon's ledger here.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa

from bench import cancels
from bench._common import (
    FIRST_ID,
    Context,
    Executed,
    capture_pass,
    daemon_argv,
    interleaved,
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

#: Unique per run: two runs against one server (a CI smoke test beside a full run) must not drop
#: each other's schemas.
PREFIX = f"smsledger_bench_{uuid.uuid4().hex[:8]}_"
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


def _copy_rows(
    cur: Any, order_rows: Sequence[tuple[Any, ...]], event_rows: Sequence[tuple[Any, ...]]
) -> None:
    """COPY orders and their events rows in (the columns of `_ORDER_COLS`, `_EVENT_COLS`)."""
    with cur.copy(f"COPY smsledger_orders ({_ORDER_COLS}) FROM STDIN") as out:
        for order_row in order_rows:
            out.write_row(order_row)
    with cur.copy(f"COPY smsledger_order_events ({_EVENT_COLS}) FROM STDIN") as out:
        for event_row in event_rows:
            out.write_row(event_row)


def _load(
    url: str,
    schema: str,
    order_rows: Sequence[tuple[Any, ...]],
    event_rows: Sequence[tuple[Any, ...]],
) -> None:
    """COPY the rows into `schema` and ``ANALYZE``, as autovacuum would leave a real ledger."""
    psycopg = _psycopg()
    with psycopg.connect(_libpq(url), options=f"-csearch_path={schema}") as conn:
        with conn.cursor() as cur:
            _copy_rows(cur, order_rows, event_rows)
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE smsledger_orders")
        conn.execute("ANALYZE smsledger_order_events")


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
                _copy_rows(cur, order_rows, event_rows)
            else:
                cur.executemany(
                    f"INSERT INTO smsledger_orders ({_ORDER_COLS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    order_rows,
                )
                cur.executemany(
                    f"INSERT INTO smsledger_order_events ({_EVENT_COLS}) "
                    "VALUES (%s, %s, %s, %s, %s, %s)",
                    event_rows,
                )
        conn.commit()


def _select(url: str, schema: str, *queries: str) -> list[list[Any]]:
    """Each query's rows, in `schema`."""
    psycopg = _psycopg()
    with psycopg.connect(_libpq(url), options=f"-csearch_path={schema}") as conn:
        return [conn.execute(query).fetchall() for query in queries]


def _contents(url: str, schema: str) -> Any:
    return _select(
        url,
        schema,
        "SELECT order_id, send_at, state, label, reason, cancel_attempts, check_attempts "
        "FROM smsledger_orders ORDER BY order_id",
        "SELECT order_id, from_state, to_state, reason, coalesce(details::text, 'null') "
        "FROM smsledger_order_events ORDER BY id",
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


def raw_one_by_one(url: str, schema: str, rows: Sequence[tuple[str, datetime]]) -> None:
    """The baseline of 2: each order and its event inserted and committed on its own."""
    psycopg = _psycopg()
    with psycopg.connect(_libpq(url), options=f"-csearch_path={schema}") as conn:
        for oid, when in rows:
            now = _naive(datetime.now(UTC))
            conn.execute(
                f"INSERT INTO smsledger_orders ({_ORDER_COLS}) "
                "VALUES (%s, %s, 'scheduled', NULL, 'registered', 0, 0, %s, %s)",
                (oid, _naive(when), now, now),
            )
            conn.execute(
                f"INSERT INTO smsledger_order_events ({_EVENT_COLS}) "
                "VALUES (%s, %s, NULL, 'scheduled', 'registered', NULL)",
                (oid, now),
            )
            conn.commit()


def one_by_one(ctx: Context, url: str) -> None:
    n = ctx.size.one_by_one
    rows = orders(n)
    say(f"  register x {n:,}, one transaction each, vs psycopg per-row commits")
    with _schemas(url, "ledger", "raw") as (mine, theirs):
        Ledger(_in_schema(url, theirs)).close()
        ledger = Ledger(_in_schema(url, mine))
        try:
            raw, ours = interleaved(
                rows,
                lambda part: raw_one_by_one(url, theirs, part),
                lambda part: [ledger.register(oid, when) for oid, when in part],
            )
        finally:
            ledger.close()
        identical = _contents(url, mine) == _contents(url, theirs)
    say(f"  same rows in both schemas: {'yes' if identical else 'NO'}")
    ctx.figure(
        "PostgreSQL one-by-one registration",
        f"register x {n:,} vs psycopg per-row commits",
        f"{ours:.2f} s ({rate(n, ours)}, {ours / n * 1000:.2f} ms each)",
        f"{raw:.2f} s ({rate(n, raw)}, {raw / n * 1000:.2f} ms each)",
        raw / ours,
        ">= 0.40 of raw (as SQLite)",
        raw / ours >= 0.4 and identical,
    )


_RAW_CANCEL_EVENTS = """
INSERT INTO smsledger_order_events (order_id, at, from_state, to_state, reason, details)
SELECT order_id, %(now)s, 'scheduled', 'cancel_requested', 'cancel requested',
       json_build_object('seconds_left', round(extract(epoch FROM send_at - %(now)s), 3))
FROM smsledger_orders WHERE label = %(label)s AND state = 'scheduled'
"""
_RAW_CANCEL_ORDERS = """
UPDATE smsledger_orders
SET state = 'cancel_requested', reason = 'cancel requested', updated_at = %(now)s,
    cancel_requested_at = %(now)s, claim_owner = NULL, claim_expires_at = NULL
WHERE label = %(label)s AND state = 'scheduled'
"""


def _campaign(url: str, schema: str, n: int) -> None:
    """`n` orders labelled ``spring`` a day or more ahead and a tenth as many ``other`` (COPY)."""
    Ledger(_in_schema(url, schema)).close()
    now = _naive(datetime.now(UTC))
    start = now + timedelta(days=1)
    order_rows = [
        (str(FIRST_ID + i), start + timedelta(seconds=i), "scheduled",
         "spring" if i < n else "other", "registered", 0, 0, now, now)
        for i in range(n + max(1, n // 10))
    ]  # fmt: skip
    event_rows = [(row[0], now, None, "scheduled", "registered", None) for row in order_rows]
    _load(url, schema, order_rows, event_rows)


def _cancel_contents(url: str, schema: str) -> Any:
    return _select(
        url,
        schema,
        "SELECT order_id, state, reason FROM smsledger_orders ORDER BY order_id",
        "SELECT order_id, from_state, to_state, reason, json_typeof(details::json -> "
        "'seconds_left') FROM smsledger_order_events ORDER BY order_id, id",
    )


def bulk_cancel(ctx: Context, url: str) -> None:
    n = ctx.size.bulk
    ours: list[float] = []
    raw: list[float] = []
    same = True
    say(f"  request_cancel_many(label=...) of {n:,} orders vs psycopg UPDATE + INSERT ... SELECT")
    for _ in range(BULK_REPEATS):
        with _schemas(url, "ledger", "raw") as (mine, theirs):
            _campaign(url, mine, n)
            _campaign(url, theirs, n)
            psycopg = _psycopg()
            with psycopg.connect(_libpq(url), options=f"-csearch_path={theirs}") as conn:
                with stopwatch() as t:
                    params = {"now": _naive(datetime.now(UTC)), "label": "spring"}
                    conn.execute(_RAW_CANCEL_EVENTS, params)
                    done = conn.execute(_RAW_CANCEL_ORDERS, params).rowcount
                    conn.commit()
                raw.append(t[0])
            ledger = Ledger(_in_schema(url, mine))
            try:
                with stopwatch() as t:
                    summary = ledger.request_cancel_many(label="spring")
                ours.append(t[0])
            finally:
                ledger.close()
            same = (
                same
                and done == n == summary.requested
                and _cancel_contents(url, mine) == _cancel_contents(url, theirs)
            )
        say(f"  run: request_cancel_many {ours[-1]:.3f} s, raw {raw[-1]:.3f} s")
    say(f"  same states and history rows in both schemas: {'yes' if same else 'NO'}")
    ours_t, raw_t = median(ours), median(raw)
    ctx.figure(
        "PostgreSQL bulk cancel",
        f"request_cancel_many(label=...), {n:,} orders vs psycopg",
        f"{ours_t:.2f} s ({rate(n, ours_t)})",
        f"{raw_t:.2f} s ({rate(n, raw_t)}) raw UPDATE + INSERT ... SELECT",
        raw_t / ours_t,
        ">= 0.5 of raw (as SQLite)",
        raw_t / ours_t >= 0.5 and same,
    )


def cancel_throughput(ctx: Context, url: str) -> None:
    n = ctx.size.cancels[cancels.GOAL_CONCURRENCY]
    with _schemas(url, "cancels") as (schema,):
        cancels.one(
            ctx,
            cancels.GOAL_CONCURRENCY,
            n,
            ledger_url=_in_schema(url, schema),
            section="PostgreSQL cancel throughput",
        )


def _build(url: str, schema: str, n: int, final: int) -> None:
    """A ledger of `n` future orders and `final` in final states, in a schema the ledger made.

    Written with COPY, not `register_many`: the rows are the ones the bulk benchmark has just
    shown identical to the ledger's, and at about 6,000 orders/s registering a million would
    take longer than everything else together.
    """
    Ledger(_in_schema(url, schema)).close()
    now = _naive(datetime.now(UTC))
    order_rows = [
        (oid, _naive(when), "scheduled", None, "registered", 0, 0, now, now)
        for oid, when in orders(n, first=FIRST_ID)
    ]
    event_rows: list[tuple[Any, ...]] = [
        (oid, now, None, "scheduled", "registered", None) for oid, *_ in order_rows
    ]
    for i in range(final):
        oid = str(FIRST_ID + n + i)
        state, send_at = (
            ("dispatched", now - timedelta(days=1)) if i % 2 else ("cancel_refused", now)
        )
        order_rows.append((oid, send_at, state, None, "bench", 0, 0, now, now))
        event_rows.append((oid, now, None, "scheduled", "registered", None))
        event_rows.append((oid, now, "scheduled", state, "bench", None))
    _load(url, schema, order_rows, event_rows)


def _plans(url: str) -> list[tuple[Executed, list[str]]]:
    """Each statement one pass runs, in order, with its time and ``EXPLAIN``."""
    ledger = Ledger(url)
    try:
        capture_pass(ledger)  # the first pass of a process also compiles its statements
        executed = capture_pass(ledger)
        plans = []
        with ledger.store.engine.connect() as conn:
            for each in executed:
                rows = conn.exec_driver_sql(f"EXPLAIN {each.statement}", each.parameters)
                plans.append((each, [r[0] for r in rows.fetchall()]))
            conn.rollback()
    finally:
        ledger.close()
    return plans


def pass_cost(ctx: Context, url: str) -> None:
    small_n, big_n = ctx.size.pass_small, ctx.size.pass_big
    folder = ctx.dir("postgres-pass")
    with _schemas(url, "small", "big") as (small, big):
        urls = {"small": _in_schema(url, small), "big": _in_schema(url, big)}
        for n, schema in ((small_n, small), (big_n, big)):
            with stopwatch() as t:
                _build(url, schema, n, ctx.size.pass_final)
            say(f"  built the {n:,}-order ledger (COPY) in {t[0]:.1f} s")
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
        for executed, plan in _plans(urls["big"]):
            say(f"\n  {executed.header()}")
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
    one_by_one(ctx, url)
    pass_cost(ctx, url)
    bulk_cancel(ctx, url)
    cancel_throughput(ctx, url)
