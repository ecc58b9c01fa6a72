"""The daemon on the real clock against a misbehaving sandbox: 503 bursts, lost and unreadable
answers, latency; and two daemons working one ledger file at once.

Whatever the provider does, every order must end `cancelled` with exactly one cancel carried out
at the provider, and no log line may carry the credentials.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import structlog
from helpers import run_pass_within, run_passes_until_final, wait_for
from structlog.testing import capture_logs

from ledger import Ledger, Order, OrderState, utcnow
from scheduler.daemon import Daemon
from scheduler.provider.client import IletiMerkeziClient
from scheduler.provider.sandbox import Faults, Sandbox

KEY = "faults-KEY-0b9e7d41c2a6"
HASH = "faults-HASH-71f3a8d05e94"
DEADLINE = 30.0


@pytest.fixture
def sandbox_options() -> dict[str, Any]:
    return {"key": KEY, "hash": HASH, "seed": 7}


@pytest.fixture
def client_options() -> dict[str, Any]:
    return {"timeout": 2.0}


def cancel_requested(ledger: Ledger, sandbox: Sandbox, count: int, prefix: str) -> list[str]:
    """`count` orders scheduled 30 to 40 minutes ahead at both ends, each with a cancel asked."""
    now = utcnow()
    orders = [
        (f"{prefix}{n:04d}", now + timedelta(minutes=30, seconds=6 * n % 600)) for n in range(count)
    ]
    ledger.register_many(orders)
    for order_id, send_at in orders:
        sandbox.add_order(order_id, send_at)
        ledger.request_cancel(order_id)
    return [order_id for order_id, _ in orders]


def test_every_order_is_cancelled_exactly_once_through_provider_faults(
    make_sandbox: Callable[..., Sandbox],
    open_ledger: Callable[[], Ledger],
    make_daemon: Callable[..., Daemon],
    make_client: Callable[..., IletiMerkeziClient],
) -> None:
    sandbox = make_sandbox(
        Faults(
            latency=0.05,
            error_rate=0.06,
            drop_rate=0.06,
            garbage_rate=0.06,
            fail_next={"get-report": 8, "cancel-order": 4},  # a 503 burst to start with
        )
    )
    ledger = open_ledger()
    ids = cancel_requested(ledger, sandbox, 60, "f")
    daemon = make_daemon(ledger, make_client(sandbox), max_concurrent_cancels=16)

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        finals = run_passes_until_final(daemon, ledger, ids, timeout=DEADLINE)

    assert Counter(o.state for o in finals) == {OrderState.CANCELLED: 60}
    truth = sandbox.truth()
    assert {oid: truth["orders"][oid]["cancels_accepted"] for oid in ids} == dict.fromkeys(ids, 1)
    # Every cancel beyond the first per order was allowed by a 456 verification, i.e. the
    # earlier one was answered 503 (not done); lost and unreadable cancels were never resent.
    for order in finals:
        calls = truth["orders"][order.order_id]["cancel_calls"]
        assert calls == order.cancel_attempts
    totals = truth["totals"]
    assert totals["cancel-order"]["dropped"] + totals["cancel-order"]["garbled"] > 0
    assert totals["get-report"]["injected_errors"] >= 8
    resent = sum(o.cancel_attempts - 1 for o in finals)
    assert resent == totals["cancel-order"]["injected_errors"]

    calls = [e for e in logs if e["event"] == "provider_call"]
    assert len(calls) == totals["get-report"]["requests"] + totals["cancel-order"]["requests"]
    assert {c["endpoint"] for c in calls} == {"get-report", "cancel-order"}
    assert all({"endpoint", "code", "outcome", "duration_ms", "order_id"} <= set(c) for c in calls)
    assert {c["code"] for c in calls if c["outcome"] == "transient"} >= {503}
    assert all(c["duration_ms"] >= 40 for c in calls if c["code"] in (456, 115))
    assert all("attempt" in c for c in calls if c["endpoint"] == "cancel-order")
    text = repr(logs)
    assert KEY not in text
    assert HASH not in text


def test_a_provider_whose_report_lags_half_a_second_gets_one_cancel_per_order(
    make_sandbox: Callable[..., Sandbox],
    open_ledger: Callable[[], Ledger],
    make_daemon: Callable[..., Daemon],
    make_client: Callable[..., IletiMerkeziClient],
) -> None:
    """On the real clock: the lag is waited out with short reads, never answered by a cancel."""
    sandbox = make_sandbox(Faults(report_lag=0.5, latency=0.01))
    ledger = open_ledger()
    ids = cancel_requested(ledger, sandbox, 20, "l")
    daemon = make_daemon(ledger, make_client(sandbox), max_concurrent_cancels=8)

    finals = run_passes_until_final(daemon, ledger, ids, timeout=DEADLINE)

    assert Counter(o.state for o in finals) == {OrderState.CANCELLED: 20}
    truth = sandbox.truth()
    assert {oid: truth["orders"][oid]["cancel_calls"] for oid in ids} == dict.fromkeys(ids, 1)
    assert {o.cancel_attempts for o in finals} == {1}
    assert truth["totals"]["cancel-order"]["codes"] == {"200": 20}


def test_every_provider_call_line_of_the_daemon_carries_its_attempt(
    make_sandbox: Callable[..., Sandbox],
    open_ledger: Callable[[], Ledger],
    make_daemon: Callable[..., Daemon],
    make_client: Callable[..., IletiMerkeziClient],
) -> None:
    sandbox = make_sandbox(Faults(fail_next={"get-report": 1}))
    ledger = open_ledger()
    ids = cancel_requested(ledger, sandbox, 2, "a")
    daemon = make_daemon(ledger, make_client(sandbox))

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        run_passes_until_final(daemon, ledger, ids, timeout=DEADLINE)

    calls = [e for e in logs if e["event"] == "provider_call"]
    assert calls
    assert [c for c in calls if "attempt" not in c] == []


def _run_side_by_side(
    daemons: list[Daemon], ledgers: list[Ledger], ids: list[str]
) -> list[list[str]]:
    """Each daemon runs passes on its own thread until all orders are final; return the ids
    each one finished."""
    errors: list[BaseException] = []
    finished: list[list[Order]] = [[] for _ in daemons]

    def work(daemon: Daemon, ledger: Ledger, mine: list[Order]) -> None:
        try:
            run_passes_until_final(daemon, ledger, ids, timeout=DEADLINE, finished=mine)
        except BaseException as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=pair, name=f"daemon-{n}")
        for n, pair in enumerate(zip(daemons, ledgers, finished, strict=True))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE + 15)
    assert not any(thread.is_alive() for thread in threads), "a daemon thread hung"
    if errors:
        raise errors[0]
    return [[order.order_id for order in mine] for mine in finished]


def test_two_daemons_on_one_ledger_send_each_cancel_once(
    make_sandbox: Callable[..., Sandbox],
    open_ledger: Callable[[], Ledger],
    make_daemon: Callable[..., Daemon],
    make_client: Callable[..., IletiMerkeziClient],
) -> None:
    sandbox = make_sandbox(Faults(latency=0.05))
    ledgers = [open_ledger(), open_ledger()]
    ids = cancel_requested(ledgers[0], sandbox, 100, "t")
    daemons = [
        make_daemon(ledger, make_client(sandbox), rng=random.Random(n), max_concurrent_cancels=8)
        for n, ledger in enumerate(ledgers)
    ]
    assert daemons[0].owner != daemons[1].owner

    finished = _run_side_by_side(daemons, ledgers, ids)

    truth = sandbox.truth()["orders"]
    assert {oid: truth[oid]["cancel_calls"] for oid in ids} == dict.fromkeys(ids, 1)
    assert {o.state for o in ledgers[0].store.orders()} == {OrderState.CANCELLED}
    assert all(finished), "both daemons took part"
    attempts = Counter(
        e.details.get("attempt")
        for oid in ids
        for e in ledgers[0].history(oid)
        if e.to_state is OrderState.CANCELLING
    )
    assert attempts == {1: 100}


def test_two_daemons_in_one_process_never_send_a_second_cancel_while_one_is_in_flight(
    make_sandbox: Callable[..., Sandbox],
    open_ledger: Callable[[], Ledger],
    make_daemon: Callable[..., Daemon],
    make_client: Callable[..., IletiMerkeziClient],
) -> None:
    # One daemon's cancels are in flight (slow) when the other runs a pass.
    sandbox = make_sandbox(Faults(latency=1.0, endpoints=frozenset({"cancel-order"})))
    ledger = open_ledger()
    ids = cancel_requested(ledger, sandbox, 4, "s")
    first, second = (
        make_daemon(open_ledger(), make_client(sandbox), rng=random.Random(n)) for n in range(2)
    )

    first.run_pass()
    wait_for(
        lambda: sandbox.truth()["totals"]["cancel-order"]["requests"] == 4,
        timeout=10,
        what="the first daemon's four cancels to be in flight",
    )
    run_pass_within(second, 10)
    assert first.wait_idle(10)

    truth = sandbox.truth()["orders"]
    assert {oid: truth[oid]["cancel_calls"] for oid in ids} == dict.fromkeys(ids, 1)
    assert {o.state for o in ledger.store.orders()} == {OrderState.CANCELLED}
