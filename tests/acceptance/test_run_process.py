"""`smsledger run` as real processes: crashes, signals, two daemons at once, exit codes.

The provider is an in-process sandbox on the real clock (so the test reads its truth directly);
each test's `smsledger.toml` names a ledger and a JSON-lines log in the test's folder, a 1 s API
timeout (so a claim's lease is `lease_for(1)` = 7 s) and 0.2 s between passes. Every process a test
starts is killed in teardown, and every wait has a deadline.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest
from helpers import SMSLEDGER, clean_env, needs_smsledger, wait_for

from ledger import FINAL_STATES, Ledger, OrderState
from scheduler.daemon import lease_for
from scheduler.provider.sandbox import Faults, Sandbox

pytestmark = needs_smsledger

KEY = "accept-KEY-4e8a1f07c3d9"
HASH = "accept-HASH-92b6d5e0a17f"
TIMEOUT_SECONDS = 1.0
LEASE = lease_for(TIMEOUT_SECONDS)
CONFIG = """\
timezone = "Europe/Istanbul"
[ledger]
url = "{url}"
synchronous = "{synchronous}"
[windows]
warn_before_seconds = 900
refuse_before_seconds = 300
[api]
base_url = "{base_url}"
key = "{key}"
hash = "{hash}"
timeout_seconds = {timeout}
[scheduler]
poll_seconds = 0.2
max_concurrent_cancels = 16
[log]
path = "log.jsonl"
"""
#: The test process's ledger writes like the daemons (see `Work.write_config`).
FAST: dict[str, Any] = {"synchronous": "NORMAL"}


@dataclass
class Work:
    """A test's folder: its config, ledger and log."""

    path: Path
    sandbox: Sandbox

    @property
    def config(self) -> Path:
        return self.path / "smsledger.toml"

    @property
    def url(self) -> str:
        return f"sqlite:///{self.path / 'ledger.db'}"

    def write_config(self, **overrides: Any) -> Path:
        values = {
            "url": "sqlite:///ledger.db",
            "base_url": self.sandbox.url,
            "key": KEY,
            "hash": HASH,
            "timeout": TIMEOUT_SECONDS,
            "synchronous": "NORMAL",  # WAL without an fsync per commit: the tests are about logic
        }
        values.update(overrides)
        self.config.write_text(CONFIG.format(**values))
        return self.config

    def log_lines(self) -> list[dict[str, Any]]:
        log = self.path / "log.jsonl"
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


class Processes:
    """Starts `smsledger` processes, their output in files; kills what is left at teardown."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._started: list[tuple[subprocess.Popen[bytes], list[IO[bytes]]]] = []

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        assert SMSLEDGER is not None
        n = len(self._started)
        out = (self._folder / f"proc{n}.out").open("wb")
        err = (self._folder / f"proc{n}.err").open("wb")
        proc = subprocess.Popen(
            [SMSLEDGER, *args], cwd=self._folder, env=clean_env(), stdout=out, stderr=err
        )
        self._started.append((proc, [out, err]))
        return proc

    def stderr_of(self, proc: subprocess.Popen[bytes]) -> str:
        n = [p for p, _ in self._started].index(proc)
        return (self._folder / f"proc{n}.err").read_text()

    def close(self) -> None:
        for proc, files in self._started:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
            for f in files:
                f.close()


def run_command(work: Work, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    assert SMSLEDGER is not None
    return subprocess.run(
        [SMSLEDGER, *args],
        cwd=work.path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def stop(proc: subprocess.Popen[bytes], sig: signal.Signals, timeout: float = 10) -> float:
    """Send `sig` and wait for the exit; return how long it took."""
    started = time.monotonic()
    proc.send_signal(sig)
    proc.wait(timeout=timeout)
    return time.monotonic() - started


@pytest.fixture
def sandbox_options() -> dict[str, Any]:
    return {"key": KEY, "hash": HASH, "seed": 3}


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Processes]:
    processes = Processes(tmp_path)
    yield processes
    processes.close()


@pytest.fixture
def ledgers(ledger_factory: Callable[..., Ledger]) -> Callable[..., Ledger]:
    """Open a ledger at `url` with this module's settings (closed after the test)."""

    def make(url: str, **kwargs: Any) -> Ledger:
        return ledger_factory(url=url, **FAST, **kwargs)

    return make


def make_work(
    tmp_path: Path, make_sandbox: Callable[..., Sandbox], latency: float
) -> tuple[Work, Sandbox]:
    sandbox = make_sandbox(Faults(latency=latency))
    work = Work(tmp_path, sandbox)
    work.write_config()
    return work, sandbox


def cancel_requested(ledger: Ledger, sandbox: Sandbox, count: int) -> list[str]:
    """`count` orders 40 to 50 minutes ahead, at the provider too, each with a cancel asked."""
    now = datetime.now(UTC)
    orders = [(f"{400000 + n}", now + timedelta(minutes=40, seconds=3 * n)) for n in range(count)]
    ledger.register_many(orders)
    for order_id, send_at in orders:
        sandbox.add_order(order_id, send_at)
        ledger.request_cancel(order_id)
    return [order_id for order_id, _ in orders]


def all_final(ledger: Ledger, ids: list[str]) -> bool:
    states = {o.order_id: o.state for o in ledger.store.orders()}
    return all(states[oid] in FINAL_STATES for oid in ids)


def assert_matches_the_provider(ledger: Ledger, sandbox: Sandbox, ids: list[str]) -> None:
    """Every order final and cancelled exactly where the provider cancelled it; no cancel after
    a successful one, and a second cancel only where a verification proved the order pending."""
    truth = sandbox.truth()["orders"]
    for oid in ids:
        order = ledger.get(oid)
        seen = truth[oid]
        assert order.state in FINAL_STATES, (oid, order.state)
        assert (order.state is OrderState.CANCELLED) == (seen["state"] == "cancelled"), (oid, seen)
        assert seen["cancels_accepted"] <= 1, (oid, seen)
        history = ledger.history(oid)
        recorded = [e for e in history if e.to_state is OrderState.CANCELLING]
        # Each cancel-order that reached the provider was recorded as an attempt before it left.
        assert seen["cancel_calls"] <= len(recorded), (oid, seen, history)
        if seen["cancel_calls"] > 1:
            resends = [e for e in recorded if e.from_state is OrderState.CANCELLING]
            assert resends, (oid, seen, history)


def provider_lines(work: Work) -> list[dict[str, Any]]:
    return [line for line in work.log_lines() if line["event"] == "provider_call"]


# -- crash and recovery --------------------------------------------------------------------------


def test_a_killed_daemon_is_recovered_by_the_next_one_without_a_second_cancel(
    tmp_path: Path,
    make_sandbox: Callable[..., Sandbox],
    procs: Processes,
    ledgers: Callable[..., Ledger],
) -> None:
    work, sandbox = make_work(tmp_path, make_sandbox, latency=0.1)
    ledger = ledgers(work.url)
    ids = cancel_requested(ledger, sandbox, 200)

    first = procs.start("--config", str(work.config), "run")
    wait_for(
        lambda: len(ledger.orders(["cancelling", "cancelled"])) >= 40,
        timeout=30,
        what="the first daemon to be well into its cancels",
    )
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    at_kill = {o.order_id: o for o in ledger.store.orders()}
    in_flight = [o for o in at_kill.values() if o.state is OrderState.CANCELLING]
    claimed = [o for o in at_kill.values() if o.state not in FINAL_STATES and o.claim_owner]
    assert any(o.state is OrderState.CANCEL_REQUESTED for o in at_kill.values()), "too late"

    second = procs.start("--config", str(work.config), "run")
    wait_for(lambda: all_final(ledger, ids), timeout=45, what="every order final")
    assert stop(second, signal.SIGTERM) < 6
    assert second.returncode == 0

    assert_matches_the_provider(ledger, sandbox, ids)
    assert Counter(ledger.get(oid).state for oid in ids) == {OrderState.CANCELLED: 200}
    # Everything the dead daemon held (pre-checks and in-flight cancels) was taken over at once,
    # its pid being gone, not after the claims' lease ran out. (Its end may come later: a cancel
    # that may have left gets the settle period before a 456 allows another.)
    recovered = [line for line in work.log_lines() if line["event"] == "stale_claim_recovered"]
    recovered_at = {
        line["order_id"]: datetime.fromisoformat(line["timestamp"]) for line in recovered
    }
    for order in claimed:
        assert order.claim_expires_at is not None
        assert recovered_at[order.order_id] < order.claim_expires_at, order
    assert {line["reason"] for line in recovered} <= {"owner gone"}
    assert len(recovered) >= len(in_flight)


def test_every_claim_of_a_killed_process_is_taken_at_once_after_a_restart(
    tmp_path: Path,
    make_sandbox: Callable[..., Sandbox],
    procs: Processes,
    ledgers: Callable[..., Ledger],
) -> None:
    work, sandbox = make_work(tmp_path, make_sandbox, latency=0.0)
    ledger = ledgers(work.url)
    ids = cancel_requested(ledger, sandbox, 5)
    # A daemon process that claimed the orders for their pre-check, then was killed.
    script = (
        "import sys, time; from datetime import timedelta;"
        "from ledger import Ledger, OrderState; from scheduler.daemon import make_owner;"
        "ledger = Ledger(sys.argv[1]); owner = make_owner(); now = ledger.now();"
        "[ledger.store.claim(oid, OrderState.CANCEL_REQUESTED, owner=owner,"
        " expires_at=now + timedelta(seconds=float(sys.argv[2])), now=now)"
        " for oid in sys.argv[3:]];"
        "print('claimed', flush=True); time.sleep(60)"
    )
    command = [sys.executable, "-c", script, work.url, str(LEASE.total_seconds()), *ids]
    with subprocess.Popen(command, stdout=subprocess.PIPE, env=clean_env()) as claimer:
        try:
            assert claimer.stdout is not None
            assert claimer.stdout.readline().strip() == b"claimed"
        finally:
            claimer.kill()
            claimer.wait(timeout=10)
    assert all(ledger.get(oid).claim_owner for oid in ids)

    done = run_command(work, "--config", str(work.config), "run", "--once")

    assert done.returncode == 0, done.stderr
    assert {ledger.get(oid).state for oid in ids} == {OrderState.CANCELLED}


# -- two daemons -------------------------------------------------------------------------------


def test_two_daemon_processes_on_one_ledger_send_each_cancel_once(
    tmp_path: Path,
    make_sandbox: Callable[..., Sandbox],
    procs: Processes,
    ledgers: Callable[..., Ledger],
) -> None:
    work, sandbox = make_work(tmp_path, make_sandbox, latency=0.05)
    ledger = ledgers(work.url)
    ids = cancel_requested(ledger, sandbox, 120)

    daemons = [procs.start("--config", str(work.config), "run") for _ in range(2)]
    wait_for(lambda: all_final(ledger, ids), timeout=45, what="every order final")
    for daemon in daemons:
        assert stop(daemon, signal.SIGTERM) < 6
        assert daemon.returncode == 0

    truth = sandbox.truth()["orders"]
    assert {oid: truth[oid]["cancel_calls"] for oid in ids} == dict.fromkeys(ids, 1)
    assert Counter(ledger.get(oid).state for oid in ids) == {OrderState.CANCELLED: 120}
    started = [line for line in work.log_lines() if line["event"] == "daemon_started"]
    assert len({line["owner"] for line in started}) == 2


# -- signals -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_run_exits_0_quickly_and_run_once_finishes_the_rest(
    sig: signal.Signals,
    tmp_path: Path,
    make_sandbox: Callable[..., Sandbox],
    procs: Processes,
    ledgers: Callable[..., Ledger],
) -> None:
    work, sandbox = make_work(tmp_path, make_sandbox, latency=0.1)
    ledger = ledgers(work.url)
    ids = cancel_requested(ledger, sandbox, 100)

    daemon = procs.start("--config", str(work.config), "run")
    wait_for(
        lambda: len(ledger.orders(["cancelling", "cancelled"])) >= 20,
        timeout=30,
        what="cancels under way",
    )
    took = stop(daemon, sig)

    assert daemon.returncode == 0, procs.stderr_of(daemon)
    assert took < 6.0
    assert "Traceback" not in procs.stderr_of(daemon)
    events = [line["event"] for line in work.log_lines()]
    assert "daemon_stopping" in events
    assert "daemon_stopped" in events
    assert not all_final(ledger, ids), "the test meant to stop the daemon mid-run"

    done = run_command(work, "--config", str(work.config), "run", "--once")

    assert done.returncode == 0, done.stderr
    assert Counter(ledger.get(oid).state for oid in ids) == {OrderState.CANCELLED: 100}
    assert_matches_the_provider(ledger, sandbox, ids)
    truth = sandbox.truth()["orders"]
    assert all(truth[oid]["cancel_calls"] == 1 for oid in ids)


def test_sigterm_while_every_read_fails_exits_quickly_and_leaves_only_free_requests(
    tmp_path: Path,
    make_sandbox: Callable[..., Sandbox],
    procs: Processes,
    ledgers: Callable[..., Ledger],
) -> None:
    """Workers waiting out backoffs stop at their next step; nothing stays claimed or half-sent."""
    work, sandbox = make_work(tmp_path, make_sandbox, latency=0.0)
    sandbox.set_faults(Faults(error_rate=1.0, endpoints=frozenset({"get-report"})))
    ledger = ledgers(work.url)
    ids = cancel_requested(ledger, sandbox, 40)

    daemon = procs.start("--config", str(work.config), "run")
    wait_for(
        lambda: sandbox.truth()["totals"]["get-report"]["requests"] >= 32,
        timeout=30,
        what="the workers to be retrying failed reads",
    )
    took = stop(daemon, signal.SIGTERM)

    assert daemon.returncode == 0, procs.stderr_of(daemon)
    assert took < 6.0
    left = ledger.store.orders()
    assert {o.state for o in left} == {OrderState.CANCEL_REQUESTED}
    assert {o.claim_owner for o in left} == {None}
    assert sandbox.truth()["totals"]["cancel-order"]["requests"] == 0

    sandbox.set_faults(Faults())
    done = run_command(work, "--config", str(work.config), "run", "--once")

    assert done.returncode == 0, done.stderr
    assert {ledger.get(oid).state for oid in ids} == {OrderState.CANCELLED}


# -- run --once --------------------------------------------------------------------------------


def test_run_once_does_every_step_of_a_pass_and_waits_for_its_cancels(
    tmp_path: Path,
    make_sandbox: Callable[..., Sandbox],
    ledgers: Callable[..., Ledger],
) -> None:
    work, sandbox = make_work(tmp_path, make_sandbox, latency=0.02)
    now = datetime.now(UTC)
    # Registered "earlier" (a ledger on a clock 20 minutes behind), so that by now:
    earlier = ledgers(work.url, clock=lambda: now - timedelta(minutes=20))
    earlier.register("past-1", now - timedelta(minutes=1))  # its send time has passed
    earlier.register("refuse-1", now + timedelta(minutes=3))  # inside refuse_before
    earlier.request_cancel("refuse-1")
    ledger = ledgers(work.url)
    ids = cancel_requested(ledger, sandbox, 30)
    ledger.register("warn-1", now + timedelta(minutes=10))  # inside warn_before
    sandbox.add_order("warn-1", now + timedelta(minutes=10))
    ledger.request_cancel("warn-1")
    ledger.register("unknown-1", now + timedelta(hours=2))  # the provider never had it
    ledger.request_cancel("unknown-1")
    ledger.register("kept-1", now + timedelta(hours=2))  # no cancel asked: left alone

    done = run_command(work, "--config", str(work.config), "run", "--once")

    assert done.returncode == 0, done.stderr
    states = {o.order_id: o.state for o in ledger.store.orders()}
    assert {states[oid] for oid in ids} == {OrderState.CANCELLED}
    assert states["past-1"] is OrderState.DISPATCHED
    assert states["refuse-1"] is OrderState.CANCEL_REFUSED
    assert states["warn-1"] is OrderState.CANCELLED
    assert states["unknown-1"] is OrderState.NOT_FOUND
    assert states["kept-1"] is OrderState.SCHEDULED
    truth = sandbox.truth()
    assert "refuse-1" not in truth["orders"]
    assert truth["totals"]["cancel-order"]["requests"] == 31

    lines = work.log_lines()
    [at_risk] = [line for line in lines if line["event"] == "cancel_at_risk"]
    assert (at_risk["order_id"], at_risk["level"], at_risk["attempts"]) == ("warn-1", "warning", 0)
    assert 500 < at_risk["seconds_left"] <= 600
    [summary] = [line for line in lines if line["event"] == "pass_once_done"]
    assert (summary["refused"], summary["dispatched"], summary["warned"]) == (1, 1, 1)
    assert summary["finished"] == 32
    # Every state change the daemon made is a log line (the test's own changes are not logged
    # to this file: registrations and cancel requests).
    logged = Counter(
        (line["order_id"], line["from_state"], line["to_state"])
        for line in lines
        if line["event"] == "order_state_changed"
    )
    made = Counter(
        (event.order_id, event.from_state and event.from_state.value, event.to_state.value)
        for order in ledger.store.orders()
        for event in ledger.history(order.order_id)
        if (event.from_state, event.to_state)
        not in {(None, OrderState.SCHEDULED), (OrderState.SCHEDULED, OrderState.CANCEL_REQUESTED)}
    )
    assert logged == made
    assert {(f, t) for _, f, t in logged} == {
        ("cancel_requested", "cancelling"),
        ("cancelling", "cancelled"),
        ("scheduled", "dispatched"),
        ("cancel_requested", "cancel_refused"),
        ("cancel_requested", "not_found"),
    }
    calls = provider_lines(work)
    # get-report (the cancels' reads, the provider's truth read back), get-reports (its
    # reconcile) and the 31 cancels.
    totals = truth["totals"]
    assert len(calls) == totals["get-report"]["requests"] + totals["get-reports"]["requests"] + 31
    assert totals["get-reports"]["requests"] >= 1  # the pass reconciled ([reconcile] defaults)
    for call in calls:
        assert {"endpoint", "code", "duration_ms", "outcome"} <= set(call)
        assert call["endpoint"] == "get-reports" or "order_id" in call  # a listing names none
    assert all(c["attempt"] == 1 for c in calls if c["endpoint"] == "cancel-order")
    text = (work.path / "log.jsonl").read_text()
    assert KEY not in text
    assert HASH not in text
    # Nor the ledger: the database file and its write-ahead log.
    stored = [path.read_bytes() for path in work.path.glob("ledger.db*")]
    assert stored
    assert not [data for data in stored if KEY.encode() in data or HASH.encode() in data]


def test_run_once_against_a_failing_provider_returns_by_its_deadline_and_leaves_the_rest(
    tmp_path: Path, make_sandbox: Callable[..., Sandbox], ledgers: Callable[..., Ledger]
) -> None:
    """Every call answers 503 and the order's margin is 40 minutes away: `run --once` still
    returns within `once_deadline_seconds`, the order free for the next run, which finishes it."""
    sandbox = make_sandbox(Faults(error_rate=1.0))
    work = Work(tmp_path, sandbox)
    config = work.write_config()
    config.write_text(
        config.read_text().replace(
            "max_concurrent_cancels = 16", "max_concurrent_cancels = 16\nonce_deadline_seconds = 3"
        )
    )
    ledger = ledgers(work.url)
    [oid] = cancel_requested(ledger, sandbox, 1)

    done = run_command(work, "--config", str(work.config), "run", "--once", timeout=30)

    assert done.returncode == 0, done.stderr
    left = ledger.get(oid)
    assert left.state in (OrderState.CANCEL_REQUESTED, OrderState.CANCELLING)
    assert left.claim_owner is None
    assert [line for line in work.log_lines() if line["event"] == "pass_once_deadline"]

    sandbox.set_faults(Faults())
    again = run_command(work, "--config", str(work.config), "run", "--once", timeout=30)

    assert again.returncode == 0, again.stderr
    assert ledger.get(oid).state is OrderState.CANCELLED
    assert sandbox.truth()["orders"][oid]["cancels_accepted"] == 1


def test_a_daemon_whose_ledger_file_is_deleted_exits_non_zero(
    tmp_path: Path, make_sandbox: Callable[..., Sandbox], procs: Processes
) -> None:
    work = Work(tmp_path, make_sandbox())
    work.write_config()
    daemon = procs.start("--config", str(work.config), "run")
    wait_for(
        lambda: any(line["event"] == "daemon_started" for line in work.log_lines()),
        timeout=20,
        what="the daemon to start",
    )

    (tmp_path / "ledger.db").unlink()

    assert daemon.wait(timeout=15) == 1
    assert [line for line in work.log_lines() if line["event"] == "ledger_file_missing"]


def test_run_without_credentials_exits_2_with_one_line(
    tmp_path: Path, make_sandbox: Callable[..., Sandbox]
) -> None:
    work = Work(tmp_path, make_sandbox())
    work.write_config(key="", hash="")

    done = run_command(work, "--config", str(work.config), "run")

    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "api.key" in done.stderr
    assert "ILETIMERKEZI_API_KEY" in done.stderr
    assert "Traceback" not in done.stderr


def test_run_with_an_unreachable_ledger_exits_non_zero_with_one_line(
    tmp_path: Path, make_sandbox: Callable[..., Sandbox]
) -> None:
    work = Work(tmp_path, make_sandbox())
    work.write_config(url="sqlite:////nonexistent/x.db")

    done = run_command(work, "--config", str(work.config), "run", "--once")

    assert done.returncode != 0
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "/nonexistent/x.db" in done.stderr
    assert "Traceback" not in done.stderr
