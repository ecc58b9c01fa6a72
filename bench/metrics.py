"""7: metrics cost nothing in a pass, and a scrape stays cheap on a big ledger.

The ledgers are the pass benchmark's (`pass_cost.build`): `pass_small` and `pass_big` orders
(10,000 and 1,000,000 at full size). Over each, an in-process `Daemon` with its `DaemonMetrics`
and a `MetricsServer` on a free port runs passes (no due work, no provider reachable or needed),
and `/metrics` is fetched over HTTP two ways: with the order gauge recounted at that scrape (the
grouped count over the state index, which the server does at most every 15 s) and with it
cached (every other scrape). Medians of interleaved runs; the recount's query plan is printed.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import httpx

from bench import pass_cost
from bench._common import (
    NO_PROVIDER,
    SANDBOX_HASH,
    SANDBOX_KEY,
    Context,
    median,
    say,
    sqlite_url,
)
from ledger import Ledger
from scheduler.daemon import Daemon
from scheduler.metrics import DaemonMetrics, MetricsServer
from scheduler.provider.client import IletiMerkeziClient

PASS_GOAL = 1.5
SCRAPE_GOAL = 1.5
#: Recounting 1,000,000 orders (every 15 s at most) should stay well under a scrape timeout.
RECOUNT_GOAL_SECONDS = 1.0
REPEATS = 15


class Served:
    """A daemon over one ledger with its metrics served; `recount` forces a fresh order count."""

    def __init__(self, path: Path) -> None:
        self.ledger = Ledger(sqlite_url(path), synchronous="NORMAL")
        self.client = IletiMerkeziClient(NO_PROVIDER, SANDBOX_KEY, SANDBOX_HASH, timeout=2.0)
        self.daemon = Daemon(self.ledger, self.client)
        self.tick = 0.0
        self.metrics = DaemonMetrics(self.daemon, monotonic=lambda: self.tick)
        self.server = MetricsServer(self.metrics, "127.0.0.1:0", 5.0).start()
        host, port = self.server.address
        self.http = httpx.Client(base_url=f"http://{host}:{port}", timeout=60)

    def run_pass(self) -> float:
        started = time.perf_counter()
        self.daemon.run_pass(wait=True)
        return time.perf_counter() - started

    def scrape(self, *, recount: bool) -> float:
        if recount:
            self.tick += 3600.0  # past the 15 s the count is kept
        started = time.perf_counter()
        answer = self.http.get("/metrics")
        seconds = time.perf_counter() - started
        if answer.status_code != 200 or b"smsledger_orders{" not in answer.content:
            raise RuntimeError(f"/metrics answered {answer.status_code}")
        return seconds

    def close(self) -> None:
        self.http.close()
        self.server.stop()
        self.client.close()
        self.ledger.close()


def count_plan(path: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "EXPLAIN QUERY PLAN SELECT state, count(*) FROM smsledger_orders GROUP BY state"
        ).fetchall()
    finally:
        conn.close()
    return [str(row[-1]) for row in rows]


def run(ctx: Context) -> None:
    size = ctx.size
    folder = ctx.dir("metrics")
    ledgers = {
        "small": (folder / "small.db", size.pass_small),
        "big": (folder / "big.db", size.pass_big),
    }
    served: dict[str, Served] = {}
    for name, (path, scheduled) in ledgers.items():
        started = time.perf_counter()
        counts = pass_cost.build(path, scheduled, size.pass_final)
        say(f"  built {name} ledger in {time.perf_counter() - started:.1f} s: {counts}")
        served[name] = Served(path)
    passes: dict[str, list[float]] = {name: [] for name in served}
    recounts: dict[str, list[float]] = {name: [] for name in served}
    cached: dict[str, list[float]] = {name: [] for name in served}
    try:
        for each in served.values():  # warm up: statements compiled, pages cached
            each.run_pass()
            each.scrape(recount=True)
        for _ in range(REPEATS):
            for name, each in served.items():
                passes[name].append(each.run_pass())
                recounts[name].append(each.scrape(recount=True))
                cached[name].append(each.scrape(recount=False))
    finally:
        for each in served.values():
            each.close()
    for name in served:
        say(
            f"  {name}: pass median {median(passes[name]) * 1000:.2f} ms, scrape with recount "
            f"{median(recounts[name]) * 1000:.1f} ms, cached scrape "
            f"{median(cached[name]) * 1000:.2f} ms"
        )
    small_n, big_n = size.pass_small, size.pass_big
    pass_ratio = median(passes["big"]) / median(passes["small"])
    ctx.figure(
        "7 metrics cost",
        f"pass with metrics on, {big_n:,} orders",
        f"{median(passes['big']) * 1000:.2f} ms",
        f"{median(passes['small']) * 1000:.2f} ms at {small_n:,} orders",
        pass_ratio,
        f"<= {PASS_GOAL}x",
        pass_ratio <= PASS_GOAL,
    )
    scrape_ratio = median(cached["big"]) / median(cached["small"])
    ctx.figure(
        "7 metrics cost",
        f"/metrics scrape, order count cached, {big_n:,} orders",
        f"{median(cached['big']) * 1000:.2f} ms",
        f"{median(cached['small']) * 1000:.2f} ms at {small_n:,} orders",
        scrape_ratio,
        f"<= {SCRAPE_GOAL}x",
        scrape_ratio <= SCRAPE_GOAL,
    )
    recount = median(recounts["big"])
    ctx.figure(
        "7 metrics cost",
        f"/metrics scrape with the 15-second recount, {big_n:,} orders",
        f"{recount * 1000:.1f} ms",
        f"{median(recounts['small']) * 1000:.1f} ms at {small_n:,} orders",
        recount / median(recounts["small"]),
        f"< {RECOUNT_GOAL_SECONDS:g} s",
        recount < RECOUNT_GOAL_SECONDS,
    )
    say(f"\n  query plan of the order count over the {big_n:,}-order ledger:")
    for line in count_plan(ledgers["big"][0]):
        say(f"    {line}")
