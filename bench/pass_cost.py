"""4: a pass with no due work costs the same over a small and a big ledger.

Each ledger holds orders all scheduled a day or more ahead plus a few hundred in final states
(half `dispatched`, registered under a clock set two days back and then passed over; half
`cancel_refused`, asked to cancel inside the refuse margin). `run --once` runs as a real
subprocess, alternating between the ledgers; the pass is timed from its own log (from
``daemon_started``, written once the ledger is open, to ``pass_once_done``), and the whole
subprocess is timed too, against the same command over an empty ledger (the start-up baseline).
Peak RSS is the child's own, from `os.wait4`.

The query plans are those of the statements a pass really runs: an in-process `Daemon` passes
over the big ledger with a `before_cursor_execute` listener recording each statement and its
parameters, which then go through ``EXPLAIN QUERY PLAN``.
"""

from __future__ import annotations

import contextlib
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench._common import (
    FIRST_ID,
    NO_PROVIDER,
    SANDBOX_HASH,
    SANDBOX_KEY,
    ChildRun,
    Context,
    Executed,
    capture_pass,
    daemon_argv,
    median,
    once_pass_seconds,
    orders,
    run_child,
    say,
    sqlite_url,
    stopwatch,
    write_config,
)
from ledger import CancelRefused, Ledger
from scheduler.daemon import Daemon
from scheduler.provider.client import IletiMerkeziClient

BUILD_BATCH = 50_000
PASS_GOAL = 1.5
RSS_GOAL_MIB = 100


def build(path: Path, scheduled: int, final: int) -> dict[str, int]:
    """A ledger of `scheduled` future orders and `final` ones in final states; its state counts."""
    url = sqlite_url(path)
    now = datetime.now(UTC)
    ledger = Ledger(url)
    try:
        for start in range(0, scheduled, BUILD_BATCH):
            ledger.register_many(
                orders(min(BUILD_BATCH, scheduled - start), first=FIRST_ID + start, now=now)
            )
        base = FIRST_ID + scheduled
        dispatched = final // 2
        past = Ledger(url, clock=lambda: now - timedelta(days=2))
        try:
            past.register_many(
                [
                    (str(base + i), now - timedelta(days=1) + timedelta(seconds=i))
                    for i in range(dispatched)
                ]
            )
        finally:
            past.close()
        daemon = Daemon(
            ledger,
            client := IletiMerkeziClient(NO_PROVIDER, SANDBOX_KEY, SANDBOX_HASH),
            max_concurrent_cancels=1,
        )
        try:
            daemon.run_pass(wait=True)  # moves them to dispatched
        finally:
            client.close()
        for i in range(dispatched, final):
            oid = str(base + i)
            # Not `now`: building a big ledger on a loaded machine can take more than 120 s.
            ledger.register(oid, datetime.now(UTC) + timedelta(seconds=120))
            with contextlib.suppress(CancelRefused):
                ledger.request_cancel(oid)
    finally:
        ledger.close()
    conn = sqlite3.connect(path)
    try:
        return dict(
            conn.execute("SELECT state, count(*) FROM smsledger_orders GROUP BY state").fetchall()
        )
    finally:
        conn.close()


def _once(folder: Path, name: str, ledger_path: Path, run: int) -> tuple[float, ChildRun]:
    log = folder / f"{name}-{run}.log.jsonl"
    config = write_config(folder / f"{name}.toml", ledger_url=sqlite_url(ledger_path), log_path=log)
    child = run_child(daemon_argv(config, once=True))
    if child.returncode != 0:
        raise RuntimeError(f"run --once over {name} exited {child.returncode}: {child.stderr}")
    return once_pass_seconds(log), child


def query_plans(path: Path) -> list[tuple[Executed, list[str]]]:
    """Each statement one pass over `path` runs, in order, with its time and query plan."""
    ledger = Ledger(sqlite_url(path))
    try:
        capture_pass(ledger)  # the first pass of a process also compiles its statements
        executed = capture_pass(ledger)
    finally:
        ledger.close()
    plans: list[tuple[Executed, list[str]]] = []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        for each in executed:
            rows = conn.execute(f"EXPLAIN QUERY PLAN {each.statement}", each.parameters)
            depth: dict[int, int] = {0: -1}
            lines = []
            for node, parent, _unused, detail in rows.fetchall():
                depth[node] = depth.get(parent, -1) + 1
                lines.append("  " * depth[node] + detail)
            plans.append((each, lines))
    finally:
        conn.close()
    return plans


def run(ctx: Context) -> None:
    size = ctx.size
    folder = ctx.dir("pass")
    ledgers = {
        "empty": (folder / "empty.db", 0, 0),
        "small": (folder / "small.db", size.pass_small, size.pass_final),
        "big": (folder / "big.db", size.pass_big, size.pass_final),
    }
    for name, (path, scheduled, final) in ledgers.items():
        with stopwatch() as t:
            counts = build(path, scheduled, final)
        say(f"  built {name} ledger in {t[0]:.1f} s: {counts or 'no orders'}")
    runs: dict[str, list[tuple[float, ChildRun]]] = {name: [] for name in ledgers}
    for i in range(size.pass_repeats):
        for name, (path, _, _) in ledgers.items():
            runs[name].append(_once(folder, name, path, i))
    summary: dict[str, tuple[float, float, int]] = {}
    for name, results in runs.items():
        passes = [p for p, _ in results]
        walls = [c.seconds for _, c in results]
        rss = max(c.max_rss_kib for _, c in results)
        summary[name] = (median(passes), median(walls), rss)
        say(
            f"  {name}: pass median {median(passes) * 1000:.1f} ms, "
            f"min {min(passes) * 1000:.1f} (runs: "
            + ", ".join(f"{p * 1000:.1f}" for p in passes)
            + f"), subprocess {median(walls):.2f} s, peak RSS {rss / 1024:.1f} MiB"
        )
    small_n, big_n = size.pass_small, size.pass_big
    pass_small, wall_small, rss_small = summary["small"]
    pass_big, wall_big, rss_big = summary["big"]
    _, wall_empty, _ = summary["empty"]
    # Here the ratio is big over small (smaller is better), unlike the throughput rows.
    ratio = pass_big / pass_small
    ctx.figure(
        "4 pass cost",
        f"`run --once` pass, {big_n:,} orders (log timestamps)",
        f"{pass_big * 1000:.1f} ms",
        f"{pass_small * 1000:.1f} ms at {small_n:,} orders",
        ratio,
        f"<= {PASS_GOAL}x",
        ratio <= PASS_GOAL,
    )
    ctx.figure(
        "4 pass cost",
        f"`run --once` subprocess minus start-up, {big_n:,} orders",
        f"{(wall_big - wall_empty) * 1000:.0f} ms ({wall_big:.2f} s - {wall_empty:.2f} s empty)",
        f"{(wall_small - wall_empty) * 1000:.0f} ms at {small_n:,} orders",
        None,
        "",
        None,
    )
    ctx.figure(
        "4 pass cost",
        f"daemon peak RSS, {big_n:,} orders",
        f"{rss_big / 1024:.1f} MiB",
        f"{rss_small / 1024:.1f} MiB at {small_n:,} orders",
        rss_big / rss_small,
        f"< {RSS_GOAL_MIB} MiB",
        rss_big / 1024 < RSS_GOAL_MIB,
    )
    say(f"\n  query plans of one pass over the {big_n:,}-order ledger:")
    for executed, plan in query_plans(ledgers["big"][0]):
        say(f"\n  {executed.header()}")
        for line in plan:
            say(f"    {line}")
