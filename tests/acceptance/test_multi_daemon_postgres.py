"""Daemons share one PostgreSQL ledger: three processes, one killed with SIGKILL mid-run; and two
whose host clocks disagree by more than a lease.

The daemons stand for three hosts: each runs with a claim owner naming a host other than this one,
so the survivors cannot see the dead process's pid and must wait for its lease, as daemons on
other machines would. The sandbox provider (in this process) keeps the truth: what was really
cancelled, and how often cancel-order was called for each order.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from postgres import fresh_schema, require_postgres

from ledger import FINAL_STATES, Ledger, Order, OrderState
from scheduler.daemon import Daemon, lease_for
from scheduler.provider.client import IletiMerkeziClient
from scheduler.provider.sandbox import DEFAULT_HASH, DEFAULT_KEY, Faults, Sandbox

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ORDERS = 1000
TIMEOUT_SECONDS = 1.0  # the client timeout; the lease is lease_for(this)
LEASE = lease_for(TIMEOUT_SECONDS)
LATENCY = 0.03  # seconds per provider answer: work is in flight when the kill comes
WORKERS = 8
KILL_AFTER_FINAL = 200  # orders finished before the kill
DEADLINE = 90.0

_RUN = """
import sys
from ledger import load_config
from scheduler.daemon import run_daemon
sys.exit(run_daemon(load_config(sys.argv[1]), owner=sys.argv[2]))
"""


@pytest.fixture
def ledger_url() -> Iterator[str]:
    with fresh_schema(require_postgres()) as url:
        yield url


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox(Faults(latency=LATENCY))


def application_name(name: str) -> str:
    return f"smsledger-test-daemon-{name}"


def write_config(folder: Path, name: str, ledger_url: str, sandbox_url: str) -> Path:
    """The daemon's config; its ledger sessions carry its name, so the test can see them end."""
    ledger_url = (
        sa.make_url(ledger_url)
        .update_query_dict({"application_name": application_name(name)})
        .render_as_string(hide_password=False)
    )
    path = folder / f"{name}.toml"
    path.write_text(
        f"""
[ledger]
url = {json.dumps(ledger_url)}

[api]
base_url = {json.dumps(sandbox_url)}
key = {json.dumps(DEFAULT_KEY)}
hash = {json.dumps(DEFAULT_HASH)}
timeout_seconds = {TIMEOUT_SECONDS}

[scheduler]
poll_seconds = 0.2
max_concurrent_cancels = {WORKERS}

[log]
path = "{name}.log.jsonl"
level = "info"
""",
        encoding="utf-8",
    )
    return path


def read_log(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def wait_until(check: Any, what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


def sessions_of(ledger: Ledger, name: str) -> int:
    with ledger.store.read() as conn:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        return int(conn.exec_driver_sql(query, (application_name(name),)).scalar_one())


def final_count(ledger: Ledger) -> int:
    return len(ledger.orders(list(FINAL_STATES)))


def pending(ledger: Ledger) -> list[Order]:
    return ledger.orders([OrderState.CANCEL_REQUESTED, OrderState.CANCELLING])


def stop_all(children: Iterable[subprocess.Popen[bytes]]) -> None:
    """Leave no daemon behind, whatever the test did."""
    for child in children:
        if child.poll() is None:
            child.kill()
            child.wait()


def test_three_daemons_split_the_work_and_the_survivors_finish_a_killed_ones_after_its_lease(
    tmp_path: Path, ledger_url: str, sandbox: Sandbox
) -> None:
    started = time.monotonic()
    ledger = Ledger(ledger_url)
    names = ["a", "b", "c"]
    victim = "a"
    # Claim owners naming other hosts: no survivor can tell the victim's pid is gone.
    owners = {name: f"host-{name}.invalid:{n + 1}:multi" for n, name in enumerate(names)}
    configs = {name: write_config(tmp_path, name, ledger_url, sandbox.url) for name in names}
    # The whole backlog first: daemons started earlier keep pace with the requests, and the kill
    # would find nothing in flight.
    send_at = datetime.now(UTC) + timedelta(hours=2)
    ids = [f"{400000000 + n}" for n in range(ORDERS)]
    for oid in ids:
        sandbox.add_order(oid, send_at)
    ledger.register_many([(oid, send_at) for oid in ids])
    for oid in ids:
        ledger.request_cancel(oid)

    with ExitStack() as stack:
        daemons = {
            name: stack.enter_context(
                subprocess.Popen(
                    [sys.executable, "-c", _RUN, str(configs[name]), owners[name]],
                    stdout=subprocess.DEVNULL,
                    stderr=stack.enter_context((tmp_path / f"{name}.stderr").open("w")),
                )
            )
            for name in names
        }
        stack.callback(stop_all, daemons.values())

        wait_until(
            lambda: (
                final_count(ledger) >= KILL_AFTER_FINAL
                and any(o.claim_owner == owners[victim] for o in pending(ledger))
            ),
            f"{KILL_AFTER_FINAL} orders final and work held by daemon {victim}",
        )
        daemons[victim].send_signal(signal.SIGKILL)
        daemons[victim].wait(timeout=10)
        killed_at = datetime.now(UTC)
        # A COMMIT the victim sent just before dying still lands: wait for its sessions to end.
        wait_until(lambda: sessions_of(ledger, victim) == 0, "the killed daemon's sessions to end")
        held = [o for o in pending(ledger) if o.claim_owner == owners[victim]]
        seen = {o.order_id: len(ledger.history(o.order_id)) for o in held}

        wait_until(lambda: final_count(ledger) == ORDERS, "every order to end")
        finished_at = datetime.now(UTC)
        for name in names[1:]:
            daemons[name].send_signal(signal.SIGTERM)
        exits = {name: daemons[name].wait(timeout=30) for name in names[1:]}

    truth = sandbox.truth()["orders"]
    orders = {o.order_id: o for o in ledger.orders()}
    histories = {oid: ledger.history(oid) for oid in ids}
    logs = {name: read_log(tmp_path / f"{name}.log.jsonl") for name in names}
    ledger.close()

    # The survivors stopped cleanly; every order ended cancelled.
    assert exits == {"b": 0, "c": 0}, [(tmp_path / f"{n}.stderr").read_text() for n in names]
    assert Counter(o.state for o in orders.values()) == {OrderState.CANCELLED: ORDERS}

    # Every cancel was carried out once. A second cancel-order was sent only after a
    # verification proved the order still pending: its history then has a second `cancelling`.
    assert {oid for oid in ids if truth[oid]["cancels_accepted"] != 1} == set()
    sent_again = {
        oid: (truth[oid]["cancel_calls"], cancellings(histories[oid]))
        for oid in ids
        if truth[oid]["cancel_calls"] != 1
    }
    assert all(1 < calls <= attempts for calls, attempts in sent_again.values()), sent_again

    # All three daemons did part of the work.
    finishers = {name: cancelled_by(logs[name]) for name in names}
    assert all(finishers.values()), {n: len(f) for n, f in finishers.items()}

    # The dead daemon's work was taken over by the survivors, and never before its lease ran out.
    assert held, "the victim held work when it was killed"
    for order in held:
        assert order.claim_expires_at is not None
        later = histories[order.order_id][seen[order.order_id] :]
        assert later, f"order {order.order_id} was finished by someone"
        assert all(e.at >= order.claim_expires_at for e in later), (order, later)
    recovered = [
        e for name in names[1:] for e in logs[name] if e["event"] == "stale_claim_recovered"
    ]
    held_cancelling = {o.order_id: o for o in held if o.state is OrderState.CANCELLING}
    assert {e["order_id"] for e in recovered} == set(held_cancelling)
    for event in recovered:
        assert (event["previous_owner"], event["reason"]) == (owners[victim], "lease expired")
        expired = held_cancelling[event["order_id"]].claim_expires_at
        assert expired is not None
        assert datetime.fromisoformat(event["timestamp"]) >= expired

    elapsed = time.monotonic() - started
    takeover = (finished_at - killed_at).total_seconds()
    print(
        f"\n{ORDERS} orders, 3 daemons x {WORKERS} workers, latency {LATENCY * 1000:.0f} ms, "
        f"lease {LEASE.total_seconds():g} s: killed {victim} holding {len(held)} orders "
        f"({len(held_cancelling)} cancelling); all final {takeover:.1f} s after the kill; "
        f"finished per daemon {[len(finishers[n]) for n in names]}; "
        f"cancels sent again after a 456: {len(sent_again)}; test {elapsed:.1f} s"
    )


def cancellings(history: list[Any]) -> int:
    return sum(1 for e in history if e.to_state is OrderState.CANCELLING)


def cancelled_by(log: list[dict[str, Any]]) -> set[str]:
    return {
        e["order_id"]
        for e in log
        if e["event"] == "order_state_changed" and e["to_state"] == OrderState.CANCELLED.value
    }


def test_two_daemons_whose_clocks_are_30_s_apart_send_each_cancel_once(ledger_url: str) -> None:
    """Claims are timed by the database's clock: a daemon whose host clock runs 30 s ahead (more
    than a lease) never takes the other's live claims, so every order gets one accepted cancel.

    Each cancel-order takes 0.9 s (the timeout is 1 s), so the other daemon would find orders
    `cancelling` with the cancel still on its way, verify them pending and send a second one.
    """
    count = 40
    skew = timedelta(seconds=30)
    assert skew > LEASE
    slow_cancels = Faults(latency=0.9, endpoints=frozenset({"cancel-order"}))
    with ExitStack() as stack:
        sandbox = stack.enter_context(Sandbox(faults=slow_cancels))
        ledgers = [
            stack.enter_context(Ledger(ledger_url)),
            stack.enter_context(Ledger(ledger_url, clock=lambda: datetime.now(UTC) + skew)),
        ]
        now = datetime.now(UTC)
        orders = [(f"skew{n:04d}", now + timedelta(minutes=40, seconds=n)) for n in range(count)]
        ledgers[0].register_many(orders)
        for order_id, send_at in orders:
            sandbox.add_order(order_id, send_at)
            ledgers[0].request_cancel(order_id)
        daemons = []
        for n, ledger in enumerate(ledgers):
            client = IletiMerkeziClient(
                sandbox.url, DEFAULT_KEY, DEFAULT_HASH, timeout=TIMEOUT_SECONDS
            )
            stack.callback(client.close)
            daemon = Daemon(
                ledger,
                client,
                max_concurrent_cancels=WORKERS,
                lease=LEASE,
                owner=f"host-{n}.example:{4000 + n}:skew",
            )
            stack.callback(daemon.stop)
            daemons.append(daemon)
        ids = [order_id for order_id, _ in orders]
        # Passes every 0.1 s as `serve` runs them, so recovery runs while cancels are in flight.
        done = threading.Event()

        def serve(daemon: Daemon) -> None:
            while not done.wait(0.1):
                daemon.run_pass()

        threads = [threading.Thread(target=serve, args=(d,), daemon=True) for d in daemons]
        threads[0].start()
        try:
            # The daemon ahead joins while the first one's cancels are on their way.
            wait_until(
                lambda: ledgers[0].orders([OrderState.CANCELLING]), "a cancel on its way", 30
            )
            threads[1].start()
            wait_until(lambda: final_count(ledgers[0]) == count, "every order final")
        finally:
            done.set()
            for thread in threads:
                thread.join(10)
        assert {o.state for o in ledgers[0].orders()} == {OrderState.CANCELLED}

    truth = sandbox.truth()["orders"]
    accepted = Counter(truth[oid]["cancels_accepted"] for oid in ids)
    calls = Counter(truth[oid]["cancel_calls"] for oid in ids)
    assert accepted == {1: count}, (accepted, calls)
    assert calls == {1: count}, calls
