"""The daemon reads the provider's truth back (`scheduler.followup`), against the sandbox over
HTTP: the dispatch follow-up, the needs_attention re-check, reconcile by one daemon per period,
and none of it ever sends a cancel or holds one up.

One `FakeClock` drives the ledger, the daemons and the sandbox; passes are waited
(`run_pass_within`), so each run of the truth thread has ended when a pass returns.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import FakeClock, run_pass_within, stale_cancelling
from postgres import ENGINES, ledger_url_for

from ledger import Ledger, Order, OrderState, jobs
from ledger.config import ReconcileConfig
from scheduler.daemon import Daemon
from scheduler.followup import LOOK_EVERY, READ_WINDOW, READS_PER_RUN, RECONCILE_JOB
from scheduler.provider.client import IletiMerkeziClient, Report
from scheduler.provider.sandbox import Sandbox

S = OrderState
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
KEY = "it-key-7a0e51c2"
HASH = "it-hash-94bd3f18"
LEASE = timedelta(seconds=35)
PASS_TIMEOUT = 30.0
FOLLOW_UP = timedelta(seconds=600)
RECHECK = timedelta(seconds=300)
SEND_DURATION = 1800.0  # the sandbox's sending (113) lasts half an hour after the send time
#: Reconcile off unless a test turns it on: the follow-up tests count get-report calls.
TRUTH = ReconcileConfig(every_seconds=0, follow_up_seconds=600, recheck_seconds=300)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def sandbox_options(clock: FakeClock) -> dict[str, Any]:
    return {"key": KEY, "hash": HASH, "clock": clock, "send_duration": SEND_DURATION}


@pytest.fixture
def sandbox(make_sandbox: Callable[..., Sandbox]) -> Sandbox:
    return make_sandbox()


@pytest.fixture
def client(sandbox: Sandbox, make_client: Callable[..., IletiMerkeziClient]) -> IletiMerkeziClient:
    return make_client(sandbox)


@pytest.fixture
def ledger(ledger_factory: Callable[..., Ledger], clock: FakeClock) -> Ledger:
    return ledger_factory(clock=clock)


@pytest.fixture
def daemon_options(clock: FakeClock) -> dict[str, Any]:
    """`make_daemon` (tests/integration/conftest.py) on the shared fake clock."""
    return {
        "clock": clock,
        "sleep": clock.advance,
        "lease_clock": clock,
        "lease": LEASE,
        "reconcile": TRUTH,
    }


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()


def order_sent_at(
    sandbox: Sandbox,
    ledger: Ledger,
    send_at: datetime,
    *,
    recipients: int = 1,
    at_provider: bool = True,
) -> str:
    """An order the ledger registered (and, unless `at_provider` is False, the provider has),
    created a minute before now."""
    created = T0 - timedelta(minutes=1)
    if at_provider:
        oid = sandbox.add_panel_order(send_at, created_at=created, recipients=recipients)
    else:
        oid = f"9{int(send_at.timestamp())}"
    ledger.register(oid, send_at)
    return oid


def needs_attention(ledger: Ledger, order_id: str, clock: FakeClock) -> Order:
    """Leave an order `needs_attention` after one cancel of ours, as the daemon does when it
    cannot verify the cancel before the margin closes."""
    now = clock.now()
    ledger.request_cancel(order_id)
    stale_cancelling(ledger, order_id, owner="gone:1:x", expires_at=now, now=now)
    result = ledger.store.transition(
        order_id,
        S.CANCELLING,
        S.NEEDS_ATTENTION,
        now=now,
        reason="cancel may have been sent but could not be verified: test",
    )
    assert result.applied and result.order is not None
    return result.order


def truth_of(sandbox: Sandbox, order_id: str) -> dict[str, Any]:
    return dict(sandbox.truth()["orders"][order_id])


def cancel_calls(sandbox: Sandbox) -> int:
    totals = sandbox.truth()["totals"]
    return int(totals["cancel-order"]["requests"])


def report_calls(sandbox: Sandbox, order_id: str) -> int:
    return int(truth_of(sandbox, order_id)["report_calls"])


def step(clock: FakeClock, seconds: float) -> None:
    """Move the clock; the truth runs at most every LOOK_EVERY, so never less than that."""
    clock.advance(max(seconds, LOOK_EVERY.total_seconds()))


# -- the dispatch follow-up ----------------------------------------------------------------------


def test_a_dispatched_order_is_read_once_after_the_follow_up_delay_and_gets_its_counters(
    sandbox: Sandbox, ledger: Ledger, daemon: Daemon, clock: FakeClock
) -> None:
    send_at = T0 + timedelta(minutes=1)
    oid = order_sent_at(sandbox, ledger, send_at, recipients=3)
    sandbox.set_undelivered(oid, 1)

    clock.set(send_at + timedelta(seconds=60))
    run_pass_within(daemon, PASS_TIMEOUT)
    assert ledger.get(oid).state is S.DISPATCHED
    assert ledger.get(oid).delivery is None
    assert report_calls(sandbox, oid) == 0  # not before send time + follow_up_seconds

    clock.set(send_at + FOLLOW_UP + timedelta(seconds=SEND_DURATION))
    run_pass_within(daemon, PASS_TIMEOUT)
    order = ledger.get(oid)
    assert order.state is S.DISPATCHED
    assert order.delivery is not None
    assert (order.total, order.delivered, order.undelivered, order.waiting) == (3, 2, 1, 0)
    assert order.delivery.checked_at == clock.now()
    assert order.last_provider_code == 114
    assert [e.to_state for e in ledger.history(oid)] == [S.SCHEDULED, S.DISPATCHED]

    for _ in range(3):  # 114 is the provider's last word: never read again
        step(clock, FOLLOW_UP.total_seconds())
        run_pass_within(daemon, PASS_TIMEOUT)
    assert report_calls(sandbox, oid) == 1
    assert cancel_calls(sandbox) == 0


def test_a_dispatched_order_the_provider_reports_115_is_cancelled_outside_smsledger(
    sandbox: Sandbox, ledger: Ledger, daemon: Daemon, clock: FakeClock
) -> None:
    send_at = T0 + timedelta(hours=1)
    oid = order_sent_at(sandbox, ledger, send_at)
    sandbox.cancel_in_panel(oid)

    clock.set(send_at + FOLLOW_UP)
    run_pass_within(daemon, PASS_TIMEOUT)

    order = ledger.get(oid)
    assert order.state is S.CANCELLED
    assert order.reason == "cancelled outside smsledger (provider reports 115)"
    last = ledger.history(oid)[-1]
    assert (last.from_state, last.to_state) == (S.DISPATCHED, S.CANCELLED)
    assert last.details["source"] == "follow-up"
    assert last.details["provider_code"] == 115
    assert cancel_calls(sandbox) == 0


def test_a_dispatched_order_the_provider_does_not_know_becomes_not_found(
    sandbox: Sandbox, ledger: Ledger, daemon: Daemon, clock: FakeClock
) -> None:
    send_at = T0 + timedelta(hours=1)
    oid = order_sent_at(sandbox, ledger, send_at, at_provider=False)

    clock.set(send_at + FOLLOW_UP)
    run_pass_within(daemon, PASS_TIMEOUT)

    order = ledger.get(oid)
    assert order.state is S.NOT_FOUND
    assert order.last_provider_code == 455
    assert ledger.history(oid)[-1].from_state is S.DISPATCHED
    assert cancel_calls(sandbox) == 0


def test_a_dispatched_order_still_sending_is_read_again_until_the_provider_reports_114(
    sandbox: Sandbox, ledger: Ledger, daemon: Daemon, clock: FakeClock
) -> None:
    send_at = T0 + timedelta(minutes=1)
    oid = order_sent_at(sandbox, ledger, send_at, recipients=2)

    clock.set(send_at + FOLLOW_UP)
    run_pass_within(daemon, PASS_TIMEOUT)
    order = ledger.get(oid)
    assert (order.state, order.last_provider_code) == (S.DISPATCHED, 113)
    assert (order.total, order.delivered, order.waiting) == (2, 0, 2)
    first_check = order.delivery_checked_at

    step(clock, 60)  # a later pass, within follow_up_seconds of the last read: not read
    run_pass_within(daemon, PASS_TIMEOUT)
    assert report_calls(sandbox, oid) == 1

    clock.set(send_at + FOLLOW_UP * 2 + timedelta(seconds=1))  # still sending: read again
    run_pass_within(daemon, PASS_TIMEOUT)
    assert report_calls(sandbox, oid) == 2
    assert ledger.get(oid).last_provider_code == 113
    assert ledger.get(oid).delivery_checked_at != first_check

    clock.set(send_at + timedelta(seconds=SEND_DURATION) + FOLLOW_UP * 2)
    run_pass_within(daemon, PASS_TIMEOUT)
    order = ledger.get(oid)
    assert (order.state, order.last_provider_code) == (S.DISPATCHED, 114)
    assert (order.total, order.delivered, order.undelivered, order.waiting) == (2, 2, 0, 0)
    step(clock, FOLLOW_UP.total_seconds() * 2)
    run_pass_within(daemon, PASS_TIMEOUT)
    assert report_calls(sandbox, oid) == 3
    assert [e.to_state for e in ledger.history(oid)] == [S.SCHEDULED, S.DISPATCHED]
    assert cancel_calls(sandbox) == 0


def test_dispatched_orders_are_not_read_more_than_a_day_after_their_send_time(
    sandbox: Sandbox, ledger: Ledger, daemon: Daemon, clock: FakeClock
) -> None:
    send_at = T0 + timedelta(minutes=1)
    oid = order_sent_at(sandbox, ledger, send_at)
    clock.set(send_at + READ_WINDOW + timedelta(seconds=1))
    run_pass_within(daemon, PASS_TIMEOUT)
    assert ledger.get(oid).state is S.DISPATCHED
    assert report_calls(sandbox, oid) == 0


def test_follow_up_reads_are_bounded_per_run_and_the_rest_come_on_the_next(
    sandbox: Sandbox, ledger: Ledger, daemon: Daemon, clock: FakeClock
) -> None:
    send_at = T0 + timedelta(minutes=1)
    ids = [order_sent_at(sandbox, ledger, send_at) for _ in range(READS_PER_RUN + 5)]
    clock.set(send_at + FOLLOW_UP + timedelta(seconds=SEND_DURATION))

    run_pass_within(daemon, PASS_TIMEOUT)
    assert daemon.truth is not None and daemon.truth.last is not None
    assert daemon.truth.last.followed_up == READS_PER_RUN
    step(clock, 0)
    run_pass_within(daemon, PASS_TIMEOUT)
    assert daemon.truth.last.followed_up == 5
    assert all(ledger.get(oid).last_provider_code == 114 for oid in ids)


def test_a_hanging_follow_up_read_never_holds_up_a_cancel(
    sandbox: Sandbox,
    ledger: Ledger,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
    clock: FakeClock,
) -> None:
    """The provider's truth runs on its own thread: a read that hangs leaves cancels alone."""
    send_at = T0 + timedelta(minutes=1)
    sent = order_sent_at(sandbox, ledger, send_at)
    to_cancel = order_sent_at(sandbox, ledger, T0 + timedelta(hours=3))
    ledger.request_cancel(to_cancel)
    clock.set(send_at + FOLLOW_UP + timedelta(seconds=SEND_DURATION))
    release = threading.Event()
    hold = _HoldingClient(client, hold_ids={sent}, release=release)
    daemon = make_daemon(client=hold)

    try:
        daemon.run_pass()
        assert hold.held.wait(PASS_TIMEOUT), "the follow-up read never started"
        assert daemon.wait_idle(PASS_TIMEOUT)
        assert ledger.get(to_cancel).state is S.CANCELLED  # while the read still hangs
    finally:
        release.set()
    assert daemon.truth is not None and daemon.truth.join(PASS_TIMEOUT)
    assert ledger.get(sent).last_provider_code == 114


class _HoldingClient:
    """The real client, whose get-report of `hold_ids` waits until `release` is set."""

    def __init__(
        self, client: IletiMerkeziClient, *, hold_ids: set[str], release: threading.Event
    ) -> None:
        self._client = client
        self._hold_ids = hold_ids
        self._release = release
        self.held = threading.Event()
        self.call_deadline = client.call_deadline

    def get_report(self, order_id: str) -> Report:
        if order_id in self._hold_ids:
            self.held.set()
            self._release.wait(60)
        return self._client.get_report(order_id)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


# -- the needs_attention re-check ----------------------------------------------------------------


def test_needs_attention_the_provider_reports_115_is_cancelled_verified_later(
    sandbox: Sandbox, ledger: Ledger, daemon: Daemon, clock: FakeClock
) -> None:
    oid = order_sent_at(sandbox, ledger, T0 + timedelta(hours=1))
    needs_attention(ledger, oid, clock)
    sandbox.cancel_in_panel(oid)  # stands for our cancel having taken after all

    run_pass_within(daemon, PASS_TIMEOUT)

    order = ledger.get(oid)
    assert order.state is S.CANCELLED
    assert order.reason == "verified later: provider reports 115"
    last = ledger.history(oid)[-1]
    assert (last.from_state, last.details["source"]) == (S.NEEDS_ATTENTION, "re-check")
    assert cancel_calls(sandbox) == 0


def test_needs_attention_the_provider_no_longer_lists_after_our_cancel_is_cancelled(
    sandbox: Sandbox, ledger: Ledger, daemon: Daemon, clock: FakeClock
) -> None:
    oid = order_sent_at(sandbox, ledger, T0 + timedelta(hours=1), at_provider=False)
    assert needs_attention(ledger, oid, clock).cancel_attempts == 1

    run_pass_within(daemon, PASS_TIMEOUT)

    order = ledger.get(oid)
    assert order.state is S.CANCELLED
    assert order.reason == (
        "verified later: provider no longer lists the order (455) after our cancel"
    )
    assert cancel_calls(sandbox) == 0


@pytest.mark.parametrize(
    ("after_send", "code", "what"),
    [(timedelta(minutes=1), 113, "sending"), (timedelta(hours=1), 114, "sent")],
)
def test_needs_attention_the_provider_reports_sending_or_sent_is_too_late(
    sandbox: Sandbox,
    ledger: Ledger,
    daemon: Daemon,
    clock: FakeClock,
    after_send: timedelta,
    code: int,
    what: str,
) -> None:
    send_at = T0 + timedelta(minutes=10)
    oid = order_sent_at(sandbox, ledger, send_at)
    needs_attention(ledger, oid, clock)

    clock.set(send_at + after_send)
    run_pass_within(daemon, PASS_TIMEOUT)

    order = ledger.get(oid)
    assert order.state is S.TOO_LATE
    assert order.reason == f"verified later: provider reports the order {what} ({code})"
    assert order.last_provider_code == code
    assert cancel_calls(sandbox) == 0


def test_needs_attention_still_pending_stays_and_is_read_again_every_recheck_seconds(
    sandbox: Sandbox, ledger: Ledger, daemon: Daemon, clock: FakeClock
) -> None:
    oid = order_sent_at(sandbox, ledger, T0 + timedelta(hours=3))
    needs_attention(ledger, oid, clock)

    run_pass_within(daemon, PASS_TIMEOUT)
    order = ledger.get(oid)
    assert (order.state, order.last_provider_code) == (S.NEEDS_ATTENTION, 456)
    assert report_calls(sandbox, oid) == 1

    step(clock, RECHECK.total_seconds() / 2)
    run_pass_within(daemon, PASS_TIMEOUT)
    assert report_calls(sandbox, oid) == 1  # not again before recheck_seconds

    step(clock, RECHECK.total_seconds())
    run_pass_within(daemon, PASS_TIMEOUT)
    assert report_calls(sandbox, oid) == 2
    assert ledger.get(oid).state is S.NEEDS_ATTENTION
    assert [e.to_state for e in ledger.history(oid)][-1] is S.NEEDS_ATTENTION
    assert cancel_calls(sandbox) == 0


def test_needs_attention_is_no_longer_read_a_day_after_its_send_time(
    sandbox: Sandbox, ledger: Ledger, daemon: Daemon, clock: FakeClock
) -> None:
    send_at = T0 + timedelta(minutes=10)
    oid = order_sent_at(sandbox, ledger, send_at)
    needs_attention(ledger, oid, clock)

    clock.set(send_at + READ_WINDOW + timedelta(seconds=1))
    run_pass_within(daemon, PASS_TIMEOUT)

    assert ledger.get(oid).state is S.NEEDS_ATTENTION  # a person settles it now
    assert report_calls(sandbox, oid) == 0


def test_without_a_reconcile_config_the_daemon_reads_nothing_back(
    sandbox: Sandbox, ledger: Ledger, make_daemon: Callable[..., Daemon], clock: FakeClock
) -> None:
    send_at = T0 + timedelta(minutes=1)
    oid = order_sent_at(sandbox, ledger, send_at)
    daemon = make_daemon(reconcile=None)
    clock.set(send_at + FOLLOW_UP)
    run_pass_within(daemon, PASS_TIMEOUT)
    assert daemon.truth is None
    assert report_calls(sandbox, oid) == 0


# -- reconcile: one daemon per period ------------------------------------------------------------


@pytest.fixture(params=ENGINES)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with ledger_url_for(str(request.param), tmp_path) as url:
        yield url


def test_two_daemons_on_one_ledger_reconcile_once_per_period(
    shared_url: str, sandbox: Sandbox, client: IletiMerkeziClient, clock: FakeClock
) -> None:
    every = timedelta(seconds=900)
    config = ReconcileConfig(every_seconds=every.total_seconds())
    ledgers = [Ledger(shared_url, clock=clock) for _ in range(2)]
    daemons = [
        Daemon(each, client, clock=clock, lease_clock=clock, lease=LEASE, reconcile=config)
        for each in ledgers
    ]
    panel = sandbox.add_panel_order(T0 + timedelta(hours=6), created_at=T0 - timedelta(days=1))
    try:

        def both_pass() -> None:
            threads = [
                threading.Thread(target=run_pass_within, args=(d, PASS_TIMEOUT)) for d in daemons
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        both_pass()
        listings = sandbox.truth()["totals"]["get-reports"]["requests"]
        assert listings == 1
        assert sum(bool(d.truth and d.truth.last and d.truth.last.reconciled) for d in daemons) == 1
        assert ledgers[0].get(panel).state is S.SCHEDULED  # imported by the one that reconciled
        seen = jobs.job(ledgers[0].store, RECONCILE_JOB)
        assert seen is not None and seen.last_run_at == T0 and seen.claim_owner is None

        clock.advance(every.total_seconds() / 2)
        both_pass()
        assert sandbox.truth()["totals"]["get-reports"]["requests"] == 1  # same period

        clock.advance(every.total_seconds() / 2)
        both_pass()
        assert sandbox.truth()["totals"]["get-reports"]["requests"] == 2  # the next one
        assert [e.to_state for e in ledgers[1].history(panel)] == [S.SCHEDULED]
        assert cancel_calls(sandbox) == 0
    finally:
        for daemon in daemons:
            daemon.stop(grace=5.0)
        for each in ledgers:
            each.close()


def test_only_one_of_many_racing_takes_a_jobs_turn(shared_url: str, clock: FakeClock) -> None:
    ledgers = [Ledger(shared_url, clock=clock) for _ in range(4)]
    won: list[str] = []
    start = threading.Barrier(len(ledgers))

    def take(index: int) -> None:
        start.wait()
        if jobs.take_turn(
            ledgers[index].store,
            "race",
            owner=f"daemon-{index}",
            now=T0,
            every=timedelta(minutes=15),
            lease=timedelta(minutes=15),
        ):
            won.append(f"daemon-{index}")

    try:
        threads = [threading.Thread(target=take, args=(i,)) for i in range(len(ledgers))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(won) == 1
        seen = jobs.job(ledgers[0].store, "race")
        assert seen is not None and seen.claim_owner == won[0]
        store = ledgers[1].store
        period = {"every": timedelta(minutes=15), "lease": timedelta(hours=1)}
        later = T0 + timedelta(minutes=10)
        assert not jobs.take_turn(store, "race", owner="late", now=later, **period)  # same period
        jobs.end_turn(ledgers[0].store, "race", owner=won[0])
        later = T0 + timedelta(minutes=15)
        assert jobs.take_turn(store, "race", owner="late", now=later, **period)  # the next one
        # A live claim (a run still going) blocks even a new period.
        later = T0 + timedelta(minutes=30)
        assert not jobs.take_turn(store, "race", owner="other", now=later, **period)
    finally:
        for each in ledgers:
            each.close()


def test_a_ledger_opened_only_if_it_exists_still_names_its_file(tmp_path: Path) -> None:
    """`smsledger run` works on the ledger opened with must_exist (so a thread's new connection
    never makes an empty file where the ledger was removed); its file check needs the path."""
    Ledger(f"sqlite:///{tmp_path / 'ledger.db'}").close()
    opened = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}", must_exist=True)
    try:
        assert opened.store.database_file == tmp_path / "ledger.db"
    finally:
        opened.close()
