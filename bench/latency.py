"""6: from `request_cancel` in one process to the pre-check reaching the provider from the daemon.

A running `smsledger run` daemon (its own process, poll_seconds 1.0) and a sandbox (its own
process, no latency) that records when the first get-report naming each order arrived. This
process registers the orders, then asks for their cancels one at a time at random intervals
(uniform 0.1-1.1 s, seeded), so requests land at every phase of the daemon's poll. Latency is the
sandbox's arrival time minus the time taken just before `request_cancel` was called; both clocks
are this machine's CLOCK_REALTIME.

What bounds it by design: a request waits for the next pass, up to poll_seconds, so the goal is
p99 below poll_seconds + 100 ms.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

from bench._common import (
    FIRST_ID,
    REPO,
    Context,
    SandboxProcess,
    daemon_argv,
    daemon_env,
    log_events,
    median,
    orders,
    percentile,
    say,
    sqlite_url,
    write_config,
)
from ledger import Ledger

POLL_SECONDS = 1.0
GOAL_MARGIN = 0.1
SEED = 6


def _wait_for_start(log: Path, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the daemon exited with {proc.returncode} before starting")
        if log.exists() and any(e.get("event") == "daemon_started" for e in log_events(log)):
            return
        time.sleep(0.05)
    raise TimeoutError("the daemon did not start")


def run(ctx: Context) -> None:
    n = ctx.size.latency_samples
    folder = ctx.dir("latency")
    rows = orders(n, first=FIRST_ID + 60_000_000, now=datetime.now(UTC))
    ledger_url = sqlite_url(folder / "ledger.db")
    rng = random.Random(SEED)
    asked: dict[str, float] = {}
    call_seconds: list[float] = []
    with SandboxProcess(latency=0.0) as sandbox:
        sandbox.add_orders(rows)
        ledger = Ledger(ledger_url)
        try:
            ledger.register_many(rows)
            log = folder / "daemon.log.jsonl"
            config = write_config(
                folder / "smsledger.toml",
                ledger_url=ledger_url,
                log_path=log,
                base_url=sandbox.url,
                poll_seconds=POLL_SECONDS,
            )
            with (folder / "daemon.stderr").open("wb") as stderr:
                daemon = subprocess.Popen(
                    daemon_argv(config, once=False),
                    cwd=REPO,
                    env=daemon_env(),
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
                try:
                    _wait_for_start(log, daemon)
                    time.sleep(POLL_SECONDS)  # past the first pass, which also opens connections
                    for oid, _ in rows:
                        time.sleep(rng.uniform(0.1, 1.1))
                        started = time.time()
                        ledger.request_cancel(oid)
                        call_seconds.append(time.time() - started)
                        asked[oid] = started
                    deadline = time.monotonic() + 5 * POLL_SECONDS
                    first = sandbox.first_reports()
                    while len(set(asked) & set(first)) < n and time.monotonic() < deadline:
                        time.sleep(0.1)
                        first = sandbox.first_reports()
                finally:
                    daemon.send_signal(signal.SIGTERM)
                    try:
                        daemon.wait(30)
                    except subprocess.TimeoutExpired:
                        daemon.kill()
                        daemon.wait()
        finally:
            ledger.close()
    missing = [oid for oid in asked if oid not in first]
    latencies = [first[oid] - asked[oid] for oid in asked if oid in first]
    p50, p99 = median(latencies), percentile(latencies, 99)
    say(
        f"  {len(latencies)} samples (missing {len(missing)}): median {p50 * 1000:.0f} ms, "
        f"p90 {percentile(latencies, 90) * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
        f"max {max(latencies) * 1000:.0f} ms, min {min(latencies) * 1000:.0f} ms; "
        f"request_cancel itself: median {median(call_seconds) * 1000:.1f} ms"
    )
    goal = POLL_SECONDS + GOAL_MARGIN
    ctx.figure(
        "6 request to first call",
        f"p99 of {len(latencies)} cancel requests (median {p50 * 1000:.0f} ms)",
        f"{p99 * 1000:.0f} ms",
        f"{POLL_SECONDS * 1000:.0f} ms poll_seconds",
        p99 / POLL_SECONDS,
        f"p99 < {goal * 1000:.0f} ms",
        p99 < goal and not missing,
    )
