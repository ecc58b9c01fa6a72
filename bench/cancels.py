"""5: cancel throughput through the daemon against a provider answering in 50 ms, beside a bare
httpx client making the same calls.

Each order costs three provider calls on the happy path (get-report 456, cancel-order 200,
get-report 115), so `max_concurrent_cancels` workers can finish at most concurrency / (3 x 50 ms)
orders a second; no Python client reaches that bound here, so the goal compares the daemon with
a bare `httpx.Client` (`bench/_bare.py`: the same limits, threads, calls and bodies, no ledger)
against the same sandbox process in the same run. For each concurrency: a fresh ledger with the
orders registered and their cancels requested, a fresh sandbox (its own process,
`Faults(latency=0.05)`) that knows the orders and as many again for the bare client, then the bare
client, one real `run --once` subprocess, and the bare client again (the mean of its two runs is
the baseline, so a drift of the machine's load falls on both sides). The daemon is timed from its
log, from its first provider call to the end of its pass. Calls per order come from the sandbox's
truth, final states from the ledger; CPU per order from each process's own rusage.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from bench._common import (
    FIRST_ID,
    REPO,
    Context,
    SandboxProcess,
    daemon_argv,
    daemon_env,
    orders,
    provider_span_seconds,
    run_child,
    say,
    sqlite_url,
    write_config,
)
from ledger import Ledger, OrderState
from scheduler.daemon import pool_size

LATENCY = 0.05
CALLS_PER_ORDER = 3
GOAL_CONCURRENCY = 32
#: The goal: the daemon's throughput over the bare client's, at GOAL_CONCURRENCY.
GOAL_OF_BARE = 0.95
#: The bare client's orders are numbered from the daemon's first id plus this.
BARE_OFFSET = 5_000_000


def bare(url: str, first: int, n: int, concurrency: int) -> tuple[float, float]:
    """Run the bare client (`bench/_bare.py`) over `n` orders from `first`: (seconds, CPU s)."""
    argv = [sys.executable, "-m", "bench._bare", url, str(first), str(n), str(concurrency)]
    done = subprocess.run(
        [*argv, str(pool_size(concurrency))],
        cwd=REPO,
        env=daemon_env(),
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the bare client exited {done.returncode}: {done.stderr}")
    result = json.loads(done.stdout)
    if result["ok"] != n:
        raise RuntimeError(f"the bare client cancelled {result['ok']} of {n} orders")
    return float(result["seconds"]), float(result["cpu_seconds"])


class Prepared(NamedTuple):
    """What `prepared` sets up for one concurrency."""

    sandbox: SandboxProcess
    config: Path
    log: Path
    ledger_url: str
    rows: list[tuple[str, datetime]]
    bare_first: int


@contextlib.contextmanager
def prepared(
    folder: Path, concurrency: int, n: int, *, bare_orders: int, ledger_url: str | None = None
) -> Iterator[Prepared]:
    """A sandbox process knowing `n` orders for the daemon and `bare_orders` more for the bare
    client, a ledger (SQLite in `folder` unless `ledger_url`) with the daemon's orders registered
    and their cancels requested, and a config for `run --once` at `concurrency`."""
    first = FIRST_ID + 10_000_000 * concurrency
    now = datetime.now(UTC)
    rows = orders(n, first=first, now=now)
    ledger_url = ledger_url or sqlite_url(folder / "ledger.db")
    with SandboxProcess(latency=LATENCY) as sandbox:
        sandbox.add_orders(rows)
        sandbox.add_orders(orders(bare_orders, first=first + BARE_OFFSET, now=now))
        ledger = Ledger(ledger_url)
        try:
            ledger.register_many(rows)
            for oid, _ in rows:
                ledger.request_cancel(oid)
        finally:
            ledger.close()
        log = folder / "daemon.log.jsonl"
        config = write_config(
            folder / "smsledger.toml",
            ledger_url=ledger_url,
            log_path=log,
            base_url=sandbox.url,
            max_concurrent_cancels=concurrency,
        )
        yield Prepared(sandbox, config, log, ledger_url, rows, first + BARE_OFFSET)


def startup_cpu(folder: Path, base_url: str) -> float:
    """CPU seconds of a `run --once` over an empty ledger: the daemon's start-up and exit."""
    config = write_config(
        folder / "empty.toml",
        ledger_url=sqlite_url(folder / "empty.db"),
        log_path=folder / "empty.log.jsonl",
        base_url=base_url,
    )
    child = run_child(daemon_argv(config, once=True))
    if child.returncode != 0:
        raise RuntimeError(f"run --once exited {child.returncode}: {child.stderr}")
    return child.cpu_seconds


def one(
    ctx: Context,
    concurrency: int,
    n: int,
    *,
    ledger_url: str | None = None,
    section: str = "5 cancel throughput",
) -> None:
    """One concurrency: the bare client, the daemon, the bare client again (see the module)."""
    folder = ctx.dir(f"cancels-{concurrency}")
    with prepared(folder, concurrency, n, bare_orders=2 * n, ledger_url=ledger_url) as setup:
        sandbox, config, log, ledger_url, rows, bare_first = setup
        empty_cpu = startup_cpu(folder, sandbox.url)
        bare_before = bare(sandbox.url, bare_first, n, concurrency)
        child = run_child(daemon_argv(config, once=True))
        if child.returncode != 0:
            raise RuntimeError(f"run --once exited {child.returncode}: {child.stderr}")
        bare_after = bare(sandbox.url, bare_first + n, n, concurrency)
        seconds = provider_span_seconds(log)
        truth = sandbox.truth()
    ledger = Ledger(ledger_url)
    try:
        states = [o.state for o in ledger.orders()]
    finally:
        ledger.close()
    cancelled = states.count(OrderState.CANCELLED)
    calls = [
        truth["orders"][oid]["report_calls"] + truth["orders"][oid]["cancel_calls"]
        for oid, _ in rows
    ]
    accepted = max(truth["orders"][oid]["cancels_accepted"] for oid, _ in rows)
    throughput = n / seconds
    bare_seconds = (bare_before[0] + bare_after[0]) / 2
    bare_throughput = n / bare_seconds
    bare_cpu_ms = (bare_before[1] + bare_after[1]) / 2 / n * 1000
    cpu_ms = (child.cpu_seconds - empty_cpu) / n * 1000
    bound = concurrency / (CALLS_PER_ORDER * LATENCY)
    share = throughput / bare_throughput
    say(
        f"  concurrency {concurrency}: {n:,} orders in {seconds:.2f} s = {throughput:.1f} orders/s"
        f" (bare httpx client {bare_before[0]:.2f} s and {bare_after[0]:.2f} s ="
        f" {bare_throughput:.1f} orders/s; bound {bound:.1f}); cancelled {cancelled}/{n};"
        f" provider calls per order: max {max(calls)}, mean {sum(calls) / n:.2f}; most cancels"
        f" accepted for one order: {accepted}; CPU per order {cpu_ms:.2f} ms (daemon process,"
        f" less {empty_cpu:.2f} s of an empty run) vs {bare_cpu_ms:.2f} ms (bare client)"
    )
    goal = concurrency == GOAL_CONCURRENCY
    ctx.figure(
        section,
        f"max_concurrent_cancels={concurrency}, {n:,} orders, vs bare httpx client",
        f"{throughput:.1f} orders/s",
        f"{bare_throughput:.1f} orders/s bare httpx client, same calls and concurrency",
        share,
        f">= {GOAL_OF_BARE:.2f} of bare client" if goal else "",
        (share >= GOAL_OF_BARE and cancelled == n) if goal else None,
    )
    ctx.figure(
        section,
        f"max_concurrent_cancels={concurrency}, share of the bound",
        f"{throughput:.1f} orders/s",
        f"{bound:.1f} orders/s bound ({concurrency} / (3 x {LATENCY * 1000:.0f} ms))",
        throughput / bound,
        "",
        None,
    )
    ctx.figure(
        section,
        f"CPU per cancelled order, concurrency {concurrency}",
        f"{cpu_ms:.2f} ms (daemon process, less an empty run)",
        f"{bare_cpu_ms:.2f} ms bare httpx client",
        None,
        "",
        None,
    )
    ctx.figure(
        section,
        f"provider calls per order, concurrency {concurrency}",
        f"max {max(calls)}, mean {sum(calls) / n:.2f}",
        f"{CALLS_PER_ORDER} (pre-check, cancel, verify)",
        None,
        "<= 3, every order cancelled",
        max(calls) <= CALLS_PER_ORDER and cancelled == n,
    )


def run(ctx: Context) -> None:
    for concurrency, n in ctx.size.cancels.items():
        one(ctx, concurrency, n)
