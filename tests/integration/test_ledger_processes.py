"""Several real processes on one SQLite ledger file (and one log file) at the same time.

Workers are started with the "spawn" context, so each is a fresh interpreter with its own
connections, and wait behind a barrier so they really start together.
"""

from __future__ import annotations

import json
import multiprocessing
import random
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from ledger import Ledger, OrderState, configure_logging
from ledger.config import LogConfig

S = OrderState
WAIT_SECONDS = 60


def run_together(target: Callable[..., None], args: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Run `target(*args[i], barrier, results)` in one process each; return what they reported."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(args))
    results = ctx.Queue()
    processes = [ctx.Process(target=target, args=(*a, barrier, results)) for a in args]
    for process in processes:
        process.start()
    try:
        reports = [results.get(timeout=WAIT_SECONDS) for _ in processes]
    finally:
        for process in processes:
            process.join(timeout=WAIT_SECONDS)
            if process.is_alive():
                process.terminate()
                process.join()
    assert [p.exitcode for p in processes] == [0] * len(processes)
    return reports


# -- workers (module level so a spawned interpreter can import them) ---------------------------


def cancel_every_order(
    url: str, log_path: str, order_ids: list[str], seed: int, barrier: Any, results: Any
) -> None:
    """Ask for a cancel of every order in a shuffled order; report states seen and exceptions."""
    seen: dict[str, str] = {}
    errors: list[str] = []
    try:
        configure_logging(LogConfig(path=log_path))
        ids = list(order_ids)
        random.Random(seed).shuffle(ids)
        with Ledger(url, create=False) as ledger:
            barrier.wait(timeout=WAIT_SECONDS)
            for order_id in ids:
                try:
                    seen[order_id] = ledger.request_cancel(order_id).state.value
                except Exception as exc:
                    errors.append(f"{order_id}: {type(exc).__name__}: {exc}")
    except Exception as exc:
        errors.append(f"worker: {type(exc).__name__}: {exc}")
    results.put({"seen": seen, "errors": errors})


def register_batch(
    url: str, numbers: list[int], base: datetime, barrier: Any, results: Any
) -> None:
    """Open the (maybe not yet created) ledger and register one batch; report how many were new."""
    report: dict[str, Any] = {"new": None, "errors": []}
    try:
        barrier.wait(timeout=WAIT_SECONDS)
        with Ledger(url) as ledger:
            report["new"] = ledger.register_many(
                [(f"r{n:03d}", base + timedelta(seconds=n)) for n in numbers]
            )
    except Exception as exc:
        report["errors"].append(f"{type(exc).__name__}: {exc}")
    results.put(report)


def write_log_lines(path: str, worker: int, count: int, barrier: Any, results: Any) -> None:
    """Append `count` JSON lines of varying length (some longer than a pipe buffer)."""
    try:
        configure_logging(LogConfig(path=path))
        log = structlog.get_logger("test")
        barrier.wait(timeout=WAIT_SECONDS)
        for n in range(count):
            log.info("line_written", worker=worker, n=n, padding="x" * (n % 9) * 1000)
        results.put("ok")
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


# -- tests -------------------------------------------------------------------------------------


def test_processes_racing_to_cancel_the_same_orders_record_each_cancel_exactly_once(
    tmp_path: Path, ledger_factory: Callable[..., Ledger]
) -> None:
    ledger = ledger_factory()
    send_at = datetime.now(UTC) + timedelta(hours=1)
    order_ids = [f"race-{n:02d}" for n in range(50)]
    assert ledger.register_many([(oid, send_at) for oid in order_ids]) == 50
    log_path = tmp_path / "race.jsonl"

    reports = run_together(
        cancel_every_order,
        [(ledger.store.url, str(log_path), order_ids, seed) for seed in range(6)],
    )

    assert [r["errors"] for r in reports] == [[]] * 6
    assert all(r["seen"] == dict.fromkeys(order_ids, "cancel_requested") for r in reports)
    for order_id in order_ids:
        assert ledger.get(order_id).state is S.CANCEL_REQUESTED
        assert [(e.from_state, e.to_state) for e in ledger.history(order_id)] == [
            (None, S.SCHEDULED),
            (S.SCHEDULED, S.CANCEL_REQUESTED),
        ]
    logged = [json.loads(line) for line in log_path.read_text(encoding="utf-8").splitlines()]
    changes = Counter(e["order_id"] for e in logged if e["event"] == "order_state_changed")
    assert changes == dict.fromkeys(order_ids, 1)


def test_processes_registering_overlapping_batches_register_each_order_once(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"  # the workers race to create the schema too
    base = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    batches = [list(range(start, start + 60)) for start in (0, 20, 40, 60, 80)]

    reports = run_together(register_batch, [(url, numbers, base) for numbers in batches])

    assert [r["errors"] for r in reports] == [[]] * 5
    assert sum(r["new"] for r in reports) == 140
    with Ledger(url) as ledger:
        orders = ledger.orders()
        assert [o.order_id for o in orders] == [f"r{n:03d}" for n in range(140)]
        assert all(o.send_at == base + timedelta(seconds=n) for n, o in enumerate(orders))
        assert all(len(ledger.history(o.order_id)) == 1 for o in orders)


def test_processes_logging_to_one_file_each_append_whole_json_lines(tmp_path: Path) -> None:
    log_path = tmp_path / "shared.jsonl"

    reports = run_together(write_log_lines, [(str(log_path), worker, 500) for worker in range(4)])

    assert reports == ["ok"] * 4
    lines = log_path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2000
    events = [json.loads(line) for line in lines]
    written = Counter((e["worker"], e["n"]) for e in events)
    assert written == {(worker, n): 1 for worker in range(4) for n in range(500)}
    assert all(e["padding"] == "x" * (e["n"] % 9) * 1000 for e in events)
