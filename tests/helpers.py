"""Shared test utilities for the daemon tiers: a controllable clock, polling with deadlines, a
client wrapper with hooks, and ways to leave an order as a crashed daemon would have left it; for
the command's tests: the installed script, a clean environment and the base config.

Imported as ``helpers`` (pytest puts ``tests/`` on ``sys.path`` for its ``conftest.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledger import FINAL_STATES, Ledger, Order, OrderState
from scheduler.daemon import Daemon, PassReport
from scheduler.provider.client import CancelAnswer, IletiMerkeziClient, Report

__all__ = [
    "CONFIG",
    "SMSLEDGER",
    "CommandResult",
    "FakeClock",
    "HookedClient",
    "clean_env",
    "dead_pid",
    "final_states",
    "owner_on_this_host",
    "run_command",
    "run_pass_within",
    "run_passes_until_final",
    "stale_cancelling",
    "wait_for",
]


#: The installed `smsledger` script beside this Python, or None (`needs_smsledger` then skips).
SMSLEDGER = shutil.which("smsledger", path=str(Path(sys.executable).parent))
needs_smsledger = pytest.mark.skipif(
    SMSLEDGER is None, reason="the smsledger script is not installed"
)

#: A config for the command's tests: `{zone}`, a ledger and a log in the working folder.
CONFIG = """\
timezone = "{zone}"
[ledger]
url = "sqlite:///ledger.db"
[log]
path = "log.jsonl"
"""


def clean_env(**extra: str) -> dict[str, str]:
    """The test process's environment without SMSLEDGER_* / ILETIMERKEZI_*, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMSLEDGER_", "ILETIMERKEZI_"))}
    env.update(extra)
    return env


class FakeClock:
    """One aware-UTC clock for the ledger, the daemon and the sandbox; time moves only on request.

    `advance` doubles as the daemon's `sleep`, so backoff waits pass instantly in fake time.
    `jump_after_next_read` moves time forward right after the next reading, to open a gap
    between two readings the code under test makes back to back.
    """

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("the fake clock needs an aware start")
        self._now = start
        self._lock = threading.Lock()
        self._jump: timedelta | None = None
        self.slept: list[float] = []

    def __call__(self) -> datetime:
        with self._lock:
            now = self._now
            if self._jump is not None:
                self._now += self._jump
                self._jump = None
            return now

    def now(self) -> datetime:
        """The time, without triggering an armed jump."""
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.slept.append(seconds)
            self._now += timedelta(seconds=seconds)

    def set(self, when: datetime) -> None:
        with self._lock:
            self._now = when

    def jump_after_next_read(self, by: timedelta) -> None:
        with self._lock:
            self._jump = by


class HookedClient:
    """Wraps a real `IletiMerkeziClient` (so every call still goes over HTTP to the sandbox) and
    runs a hook before or after an endpoint: to move the clock or change the faults at the exact
    step of the sequence a test is about."""

    def __init__(self, client: IletiMerkeziClient) -> None:
        self._client = client
        self.before_cancel: list[Callable[[], None]] = []
        self.after_cancel: list[Callable[[], None]] = []
        self.after_report: list[Callable[[Report], None]] = []
        #: cancel-order of these order ids waits until the event is set (a call that hangs).
        self.holds: dict[str, threading.Event] = {}
        self.cancel_calls = 0
        self.report_calls = 0

    @property
    def call_deadline(self) -> float:
        return self._client.call_deadline

    def get_report(self, order_id: str) -> Report:
        self.report_calls += 1
        report = self._client.get_report(order_id)
        for hook in self.after_report:
            hook(report)
        return report

    def cancel_order(self, order_id: str) -> CancelAnswer:
        self.cancel_calls += 1
        for before in self.before_cancel:
            before()
        hold = self.holds.get(order_id)
        if hold is not None:
            hold.wait(timeout=60)
        try:
            return self._client.cancel_order(order_id)
        finally:
            for hook in self.after_cancel:
                hook()

    def close(self) -> None:
        self._client.close()


def wait_for(
    predicate: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll `predicate` until it returns something truthy; fail the test after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        time.sleep(interval)


def run_pass_within(daemon: Daemon, timeout: float) -> PassReport:
    """`daemon.run_pass(wait=True)` on a helper thread; a pass that hangs fails the test (the
    daemon is stopped first, so its workers end instead of outliving the test)."""
    result: list[PassReport] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(daemon.run_pass(wait=True))
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="test-pass", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        daemon.stop(grace=5.0)
        thread.join(5.0)
        raise AssertionError(f"run_pass(wait=True) did not return within {timeout} s")
    if errors:
        raise errors[0]
    return result[0]


def final_states(ledger: Ledger, order_ids: Iterable[str]) -> dict[str, OrderState]:
    return {oid: ledger.get(oid).state for oid in order_ids}


def run_passes_until_final(
    daemon: Daemon,
    ledger: Ledger,
    order_ids: Iterable[str],
    *,
    timeout: float,
    finished: list[Order] | None = None,
) -> list[Order]:
    """Run waited passes until every order is final; fail after `timeout` seconds.

    The orders each pass reports finished are added to `finished`.
    """
    ids = list(order_ids)
    deadline = time.monotonic() + timeout
    while True:
        report = run_pass_within(daemon, max(deadline - time.monotonic(), 1.0))
        if finished is not None:
            finished.extend(report.finished)
        orders = ledger.store.orders()
        by_id = {o.order_id: o for o in orders}
        if all(by_id[oid].state in FINAL_STATES for oid in ids):
            return [by_id[oid] for oid in ids]
        if time.monotonic() >= deadline:
            left = {
                oid: by_id[oid].state.value for oid in ids if by_id[oid].state not in FINAL_STATES
            }
            raise AssertionError(f"orders not final after {timeout} s: {left}")


def owner_on_this_host(pid: int, tag: str = "test") -> str:
    """A claim owner id as `make_owner` builds them, for a given pid of this host."""
    return f"{socket.gethostname()}:{pid}:{tag}"


def dead_pid() -> int:
    """The pid of a process of this host that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=30)
    pid = proc.pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid
    raise AssertionError(f"pid {pid} was reused at once; cannot stand for a dead process")


def stale_cancelling(
    ledger: Ledger,
    order_id: str,
    *,
    owner: str,
    expires_at: datetime,
    now: datetime,
    attempts: int = 1,
) -> Order:
    """Leave a `cancel_requested` order as a daemon does right before sending cancel-order:
    claimed by `owner` and recorded `cancelling` (attempt 1), with the claim expiring at
    `expires_at`. Whether the cancel reached the provider is up to the sandbox set-up."""
    claimed = ledger.store.claim(
        order_id, OrderState.CANCEL_REQUESTED, owner=owner, expires_at=expires_at, now=now
    )
    assert claimed is not None, f"could not claim {order_id}"
    state = OrderState.CANCEL_REQUESTED
    result = None
    for attempt in range(1, attempts + 1):
        result = ledger.store.transition(
            order_id,
            state,
            OrderState.CANCELLING,
            now=now,
            reason=f"sending cancel-order (attempt {attempt})",
            details={"attempt": attempt},
            increment=("cancel_attempts",),
            values={"claim_expires_at": expires_at},
            expect_owner=owner,
        )
        assert result.applied, f"could not record {order_id} cancelling"
        state = OrderState.CANCELLING
    assert result is not None and result.order is not None
    return result.order


@dataclass(frozen=True)
class CommandResult:
    """What one run of the real `smsledger` command did."""

    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()

    def json(self) -> Any:
        return json.loads(self.out)


def run_command(
    cwd: Path,
    *args: str,
    env: dict[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 120,
) -> CommandResult:
    """Run the installed `smsledger` in `cwd` with a clean environment; never raises on exit."""
    assert SMSLEDGER is not None
    done = subprocess.run(
        [SMSLEDGER, *args],
        cwd=cwd,
        env=env if env is not None else clean_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return CommandResult(done.returncode, done.stdout, done.stderr)
