"""5: cancel throughput through the daemon against a provider answering in 50 ms.

Each order costs three provider calls on the happy path (get-report 456, cancel-order 200,
get-report 115), so `max_concurrent_cancels` workers can finish at most concurrency / (3 x 50 ms)
orders a second. For each concurrency: a fresh ledger with the orders registered and their cancels
requested, a fresh sandbox (its own process, `Faults(latency=0.05)`) that knows the orders, and one
real `run --once` subprocess; the pass is timed from the daemon's log. Calls per order come from
the sandbox's truth, final states from the ledger.
"""

from __future__ import annotations

from datetime import UTC, datetime

from bench._common import (
    FIRST_ID,
    Context,
    SandboxProcess,
    daemon_argv,
    once_pass_seconds,
    orders,
    run_child,
    say,
    sqlite_url,
    write_config,
)
from ledger import Ledger, OrderState

LATENCY = 0.05
CALLS_PER_ORDER = 3
GOAL_CONCURRENCY = 32
GOAL_SHARE = 0.8


def one(ctx: Context, concurrency: int, n: int) -> None:
    folder = ctx.dir(f"cancels-{concurrency}")
    rows = orders(n, first=FIRST_ID + 10_000_000 * concurrency, now=datetime.now(UTC))
    ledger_url = sqlite_url(folder / "ledger.db")
    with SandboxProcess(latency=LATENCY) as sandbox:
        sandbox.add_orders(rows)
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
        child = run_child(daemon_argv(config, once=True))
        if child.returncode != 0:
            raise RuntimeError(f"run --once exited {child.returncode}: {child.stderr}")
        seconds = once_pass_seconds(log)
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
    bound = concurrency / (CALLS_PER_ORDER * LATENCY)
    share = throughput / bound
    say(
        f"  concurrency {concurrency}: {n:,} orders in {seconds:.2f} s = {throughput:.1f} orders/s"
        f" (bound {bound:.1f}); cancelled {cancelled}/{n}; provider calls per order: max "
        f"{max(calls)}, mean {sum(calls) / n:.2f}; most cancels accepted for one order: {accepted}"
    )
    goal = concurrency == GOAL_CONCURRENCY
    ctx.figure(
        "5 cancel throughput",
        f"max_concurrent_cancels={concurrency}, {n:,} orders",
        f"{throughput:.1f} orders/s",
        f"{bound:.1f} orders/s bound ({concurrency} / (3 x {LATENCY * 1000:.0f} ms))",
        share,
        f">= {GOAL_SHARE:.0%} of bound" if goal else "",
        (share >= GOAL_SHARE and cancelled == n) if goal else None,
    )
    ctx.figure(
        "5 cancel throughput",
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
