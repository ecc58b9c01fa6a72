"""The daemon's passes on a real ledger file, talking HTTP to an in-process sandbox.

One `FakeClock` drives the ledger, the daemon and the sandbox, and is the daemon's `sleep`, so
margins, leases and backoff waits are crossed in fake time and each test runs in milliseconds.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import structlog
from helpers import (
    FakeClock,
    HookedClient,
    dead_pid,
    owner_on_this_host,
    run_pass_within,
    stale_cancelling,
    wait_for,
)
from structlog.testing import capture_logs

from ledger import Ledger, Order, OrderState, utcnow
from scheduler.daemon import Daemon, make_owner
from scheduler.provider.client import IletiMerkeziClient
from scheduler.provider.errors import ProviderTransientError
from scheduler.provider.sandbox import Faults, Sandbox

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
KEY = "it-key-5d1c0f3a9b"
HASH = "it-hash-e27b94c6d8"
LEASE = timedelta(seconds=35)
WARN = timedelta(minutes=15)
REFUSE = timedelta(minutes=5)
OTHER_HOST_OWNER = "some-other-host:4242:abcd1234"
PASS_TIMEOUT = 15.0
SETTLE = 20.0  # CancelSequence's default settle_seconds, which the daemon uses here


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(START)


@pytest.fixture
def sandbox_options(clock: FakeClock) -> dict[str, Any]:
    return {"key": KEY, "hash": HASH, "clock": clock, "seed": 1}


@pytest.fixture
def ledger_options(clock: FakeClock) -> dict[str, Any]:
    return {"warn_before": WARN, "refuse_before": REFUSE, "synchronous": "NORMAL", "clock": clock}


@pytest.fixture
def daemon_options(clock: FakeClock) -> dict[str, Any]:
    """Business time, sleeps and leases all on the fake clock."""
    return {"clock": clock, "sleep": clock.advance, "lease": LEASE, "lease_clock": clock}


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon()


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The pid of a live process of this host (a sleeping child), standing for another daemon."""
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]) as proc:
        yield proc.pid
        proc.kill()


@pytest.fixture
def order(ledger: Ledger, sandbox: Sandbox, clock: FakeClock) -> Callable[..., Order]:
    """Register an order at the ledger and the sandbox, and ask for its cancel.

    `send_in`: time from now to the ledger's send time (default one hour). `provider_send_in`:
    the sandbox's own send time when it must differ (None: same); `at_provider=False` leaves the
    sandbox without the order. `cancel=False` leaves it `scheduled`.
    """
    count = iter(range(1, 10_000))

    def make(
        *,
        send_in: timedelta = timedelta(hours=1),
        provider_send_in: timedelta | None = None,
        at_provider: bool = True,
        cancel: bool = True,
        order_id: str | None = None,
    ) -> Order:
        oid = order_id or f"31289{next(count):04d}"
        now = clock.now()
        registered = ledger.register(oid, now + send_in)
        if at_provider:
            sandbox.add_order(
                oid, now + (send_in if provider_send_in is None else provider_send_in)
            )
        return ledger.request_cancel(oid) if cancel else registered

    return make


def truth_of(sandbox: Sandbox, order_id: str) -> dict[str, Any]:
    truth: dict[str, Any] = sandbox.truth()["orders"][order_id]
    return truth


def states_in_history(ledger: Ledger, order_id: str) -> list[str]:
    return [event.to_state.value for event in ledger.history(order_id)]


def events_named(
    logs: Sequence[MutableMapping[str, Any]], name: str
) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# -- pre-check ---------------------------------------------------------------------------------


def test_pending_order_is_recorded_cancelling_before_its_one_cancel_and_verified_cancelled(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
) -> None:
    oid = order().order_id
    hooked = HookedClient(client)
    seen_at_cancel: list[Order] = []
    hooked.before_cancel.append(lambda: seen_at_cancel.append(ledger.get(oid)))
    daemon = make_daemon(client=hooked)

    report = run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.CANCELLED
    assert final.reason == "cancel verified: provider reports 115"
    assert final.cancel_attempts == 1
    assert final.last_provider_code == 115
    assert final.claim_owner is None
    assert [o.order_id for o in report.finished] == [oid]
    # The ledger said `cancelling`, attempt 1, before the request left.
    assert [(o.state, o.cancel_attempts, o.claim_owner) for o in seen_at_cancel] == [
        (OrderState.CANCELLING, 1, daemon.owner)
    ]
    history = ledger.history(oid)
    assert [e.to_state.value for e in history] == [
        "scheduled",
        "cancel_requested",
        "cancelling",
        "cancelled",
    ]
    assert history[2].details == {"attempt": 1}
    truth = truth_of(sandbox, oid)
    assert (truth["state"], truth["cancel_calls"], truth["cancels_accepted"]) == ("cancelled", 1, 1)
    assert truth["report_calls"] == 2  # the pre-check and the verification


@pytest.mark.parametrize(
    ("setup", "state", "code", "reason_part"),
    [
        ("sending", OrderState.TOO_LATE, 113, "113"),
        ("completed", OrderState.TOO_LATE, 114, "114"),
        ("cancelled_earlier", OrderState.CANCELLED, 115, "already not sent at provider"),
        ("unknown_id", OrderState.NOT_FOUND, 455, "455"),
    ],
)
def test_precheck_answer_other_than_pending_ends_the_order_without_a_cancel(
    setup: str,
    state: OrderState,
    code: int,
    reason_part: str,
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    daemon: Daemon,
    order: Callable[..., Order],
) -> None:
    if setup == "sending":
        oid = order(provider_send_in=timedelta(seconds=60)).order_id  # in the provider's queue
    elif setup == "completed":
        oid = order(provider_send_in=timedelta(hours=-1)).order_id  # sent an hour ago
    elif setup == "cancelled_earlier":
        oid = order().order_id
        client.cancel_order(oid)  # someone cancelled it at the provider already
    else:
        oid = order(at_provider=False).order_id
    calls_before = truth_of(sandbox, oid)["cancel_calls"] if setup != "unknown_id" else 0

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is state
    assert reason_part in (final.reason or "")
    assert final.last_provider_code == code
    assert final.cancel_attempts == 0
    assert states_in_history(ledger, oid)[-2:] == ["cancel_requested", state.value]
    assert sandbox.truth()["totals"]["cancel-order"]["requests"] == calls_before
    if setup != "unknown_id":
        assert truth_of(sandbox, oid)["cancel_calls"] == calls_before


# -- verification ------------------------------------------------------------------------------


def test_cancel_that_did_not_take_is_sent_again_after_verification_proves_it_pending(
    ledger: Ledger, sandbox: Sandbox, daemon: Daemon, order: Callable[..., Order]
) -> None:
    oid = order().order_id
    sandbox.set_faults(Faults(fail_next={"cancel-order": 1}))  # 503: the cancel was not done

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.CANCELLED
    assert final.cancel_attempts == 2
    history = ledger.history(oid)
    assert [e.to_state.value for e in history][2:] == ["cancelling", "cancelling", "cancelled"]
    assert [e.details for e in history[2:4]] == [
        {"attempt": 1},
        {"attempt": 2, "resend": True, "after": "refused"},
    ]
    assert history[3].reason == (
        "re-sending cancel-order (attempt 2): the last one was refused and never reached the"
        " provider"
    )
    truth = truth_of(sandbox, oid)
    assert (truth["cancel_calls"], truth["cancels_accepted"]) == (2, 1)
    assert truth["report_calls"] == 3  # pre-check, verify (456), verify (115)


@pytest.mark.parametrize(
    ("fault", "answer_lost"),
    [("drop_next", "connection closed"), ("garbage_next", "HTML instead of JSON")],
)
def test_cancel_whose_answer_is_lost_is_verified_not_resent(
    fault: str,
    answer_lost: str,
    ledger: Ledger,
    sandbox: Sandbox,
    daemon: Daemon,
    order: Callable[..., Order],
) -> None:
    oid = order().order_id
    sandbox.set_faults(Faults.from_dict({fault: {"cancel-order": 1}}))

    with capture_logs() as logs:
        run_pass_within(daemon, PASS_TIMEOUT)

    assert ledger.get(oid).state is OrderState.CANCELLED
    truth = truth_of(sandbox, oid)
    assert (truth["cancel_calls"], truth["cancels_accepted"]) == (1, 1)
    unanswered = events_named(logs, "cancel_unanswered")
    assert len(unanswered) == 1, answer_lost
    assert unanswered[0]["maybe_delivered"] is True


def test_verification_455_after_a_cancel_counts_as_cancelled(
    ledger: Ledger,
    sandbox: Sandbox,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    """A crashed daemon's cancel of an order the provider no longer lists: 455 proves it."""
    oid = order(at_provider=False).order_id
    stale_cancelling(
        ledger, oid, owner=OTHER_HOST_OWNER, expires_at=clock.now() - LEASE, now=clock.now()
    )

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.CANCELLED
    assert final.reason == "cancel verified: provider no longer lists the order (455)"
    assert final.cancel_attempts == 1  # nothing resent
    assert sandbox.truth()["totals"]["cancel-order"]["requests"] == 0


@pytest.mark.parametrize(
    ("advance", "code"),
    [
        (timedelta(minutes=7), 113),  # the provider queued it meanwhile
        (timedelta(minutes=9), 114),  # and sent it
    ],
)
def test_verification_finding_the_order_sending_or_sent_is_too_late(
    advance: timedelta,
    code: int,
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    # The provider sends it at 8 minutes (queued from 6), while our ledger says an hour.
    oid = order(send_in=timedelta(hours=1), provider_send_in=timedelta(minutes=8)).order_id
    sandbox.set_faults(Faults(fail_next={"cancel-order": 1}))
    hooked = HookedClient(client)
    hooked.after_cancel.append(lambda: clock.advance(advance.total_seconds()))
    # The jump moves business time (the provider's queue); claims keep the host's clock, else a
    # call lasting minutes would (rightly) lose its claim.
    daemon = make_daemon(client=hooked, lease_clock=utcnow)

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.TOO_LATE
    assert final.last_provider_code == code
    assert str(code) in (final.reason or "")
    assert states_in_history(ledger, oid)[-2:] == ["cancelling", "too_late"]
    truth = truth_of(sandbox, oid)
    assert (truth["cancel_calls"], truth["cancels_accepted"]) == (1, 0)


def _lose_the_answer() -> None:
    raise ProviderTransientError("answer lost", endpoint="cancel-order", maybe_delivered=True)


@pytest.mark.parametrize(
    ("cancel_outcome", "expected"),
    [
        # The provider answered 503: that cancel provably never arrived, nothing was cancelled.
        ("refused with 503", OrderState.CANCEL_REFUSED),
        # The same refusal seen as a lost answer: it may have arrived, so a person must look.
        ("answer lost", OrderState.NEEDS_ATTENTION),
    ],
)
def test_still_pending_when_the_refuse_margin_has_closed_ends_by_what_the_cancel_may_have_done(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
    clock: FakeClock,
    cancel_outcome: str,
    expected: OrderState,
) -> None:
    oid = order(send_in=timedelta(minutes=10)).order_id
    sandbox.set_faults(Faults(fail_next={"cancel-order": 1}))
    hooked = HookedClient(client)
    # The cancel took six minutes to fail: four minutes left, inside refuse_before (five).
    hooked.after_cancel.append(lambda: clock.advance(6 * 60))
    if cancel_outcome == "answer lost":
        hooked.after_cancel.append(_lose_the_answer)
    daemon = make_daemon(client=hooked, lease_clock=utcnow)  # claims on the host's clock

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is expected
    if expected is OrderState.NEEDS_ATTENTION:
        assert "456" in (final.reason or "")
        assert "refuse margin" in (final.reason or "")
    truth = truth_of(sandbox, oid)
    assert (truth["state"], truth["cancel_calls"], truth["cancels_accepted"]) == ("pending", 1, 0)


def test_margin_closing_between_verification_and_resend_ends_the_order_not_the_worker(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    oid = order(send_in=timedelta(minutes=10)).order_id
    sandbox.set_faults(Faults(fail_next={"cancel-order": 1}))
    hooked = HookedClient(client)
    verifications: list[int] = []

    def after_report(report: Any) -> None:
        verifications.append(report.code)
        if len(verifications) == 2:  # the verification after the failed cancel: still 456
            # The next clock reading (after_verify's) still sees WARN; the one after, REFUSE.
            clock.jump_after_next_read(timedelta(minutes=5))

    hooked.after_report.append(after_report)
    daemon = make_daemon(client=hooked)

    with capture_logs() as logs:
        run_pass_within(daemon, PASS_TIMEOUT)

    # The one cancel was refused with a 503, so nothing was cancelled: cancel_refused, no crash.
    assert verifications == [456, 456]
    assert not events_named(logs, "cancel_sequence_failed")
    final = ledger.get(oid)
    assert final.state is OrderState.CANCEL_REFUSED
    assert truth_of(sandbox, oid)["cancel_calls"] == 1


def test_an_order_that_stays_pending_gets_at_most_five_cancels_then_a_person(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    """Each cancel may have arrived (its answer was lost) yet the order stays pending: five such
    cancels, each given the settle period, then a person."""
    oid = order().order_id
    sandbox.set_faults(Faults(fail_next={"cancel-order": 50}))  # not done at the provider...
    hooked = HookedClient(client)
    hooked.after_cancel.append(_lose_the_answer)  # ...but we cannot know that
    sent_at: list[datetime] = []
    hooked.before_cancel.append(lambda: sent_at.append(clock.now()))
    daemon = make_daemon(client=hooked)

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.NEEDS_ATTENTION
    assert final.cancel_attempts == 5
    assert final.reason == (
        "provider still reports the order pending (456) after 5 cancels that may have reached it"
    )
    assert truth_of(sandbox, oid)["cancel_calls"] == 5
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(sent_at)]
    assert len(gaps) == 4
    assert all(gap >= SETTLE for gap in gaps)


# -- settling: reports lag behind cancels -------------------------------------------------------


@pytest.mark.parametrize("lag", [0.5, 8.0], ids=["half-a-second", "eight-seconds"])
def test_a_report_lagging_behind_the_cancel_gets_no_second_cancel(
    lag: float,
    ledger: Ledger,
    sandbox: Sandbox,
    daemon: Daemon,
    order: Callable[..., Order],
) -> None:
    """An eventually consistent provider still reads 456 for a while after taking the cancel:
    that is waited out (shorter than the settle period), never answered with another cancel."""
    ids = [order().order_id for _ in range(3)]
    sandbox.set_faults(Faults(report_lag=lag))

    with capture_logs() as logs:
        run_pass_within(daemon, PASS_TIMEOUT)

    truth = sandbox.truth()["orders"]
    for oid in ids:
        final = ledger.get(oid)
        assert final.state is OrderState.CANCELLED
        assert final.reason == "cancel verified: provider reports 115"
        assert final.cancel_attempts == 1
        assert (truth[oid]["cancel_calls"], truth[oid]["cancels_accepted"]) == (1, 1)
        assert states_in_history(ledger, oid).count("cancelling") == 1
    assert events_named(logs, "cancel_settling")


def test_a_cancel_the_provider_did_not_take_is_resent_only_after_the_settle_period(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    oid = order().order_id
    # The first cancel is not carried out, and its answer is lost: it may have arrived.
    sandbox.set_faults(Faults(fail_next={"cancel-order": 1}))
    hooked = HookedClient(client)
    sent_at: list[datetime] = []
    hooked.before_cancel.append(lambda: sent_at.append(clock.now()))
    hooked.after_cancel.append(lambda: None if len(sent_at) > 1 else _lose_the_answer())
    daemon = make_daemon(client=hooked)

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.CANCELLED
    assert final.cancel_attempts == 2
    truth = truth_of(sandbox, oid)
    assert (truth["cancel_calls"], truth["cancels_accepted"]) == (2, 1)
    assert len(sent_at) == 2
    assert (sent_at[1] - sent_at[0]).total_seconds() >= SETTLE
    assert truth["report_calls"] > 3  # pre-check, then 456s read again while settling
    resend = ledger.history(oid)[-2]
    assert (resend.from_state, resend.to_state) == (OrderState.CANCELLING, OrderState.CANCELLING)
    pending = resend.details["pending_seconds"]
    assert resend.details == {
        "attempt": 2,
        "resend": True,
        "after": "pending",
        "pending_seconds": pending,
    }
    assert pending >= SETTLE
    assert resend.reason == (
        f"re-sending cancel-order (attempt 2): still pending (456) {pending:g} s after a cancel"
        " that may have reached the provider"
    )


def test_still_pending_while_settling_when_the_margin_closes_needs_attention_after_one_cancel(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
) -> None:
    """Ten seconds before the refuse margin the settle period cannot end: no second cancel."""
    oid = order(send_in=REFUSE + timedelta(seconds=10)).order_id
    sandbox.set_faults(Faults(fail_next={"cancel-order": 1}))
    hooked = HookedClient(client)
    hooked.after_cancel.append(_lose_the_answer)
    daemon = make_daemon(client=hooked)

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.NEEDS_ATTENTION
    assert final.reason == (
        "provider still reports the order pending (456) after a cancel that may have reached it,"
        " and the refuse margin has closed"
    )
    assert truth_of(sandbox, oid)["cancel_calls"] == 1


class _SwitchingClient:
    """Talks to one sandbox until `switch`, then to another: a provider that lost the order."""

    def __init__(self, first: IletiMerkeziClient, then: IletiMerkeziClient) -> None:
        self.current, self._then = first, then

    def switch(self) -> None:
        self.current = self._then

    def get_report(self, order_id: str) -> Any:
        return self.current.get_report(order_id)

    def cancel_order(self, order_id: str) -> Any:
        return self.current.cancel_order(order_id)

    def close(self) -> None:
        """The fixtures close both clients."""


def test_a_455_after_cancels_that_were_all_refused_is_not_found_not_cancelled(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_client: Callable[..., IletiMerkeziClient],
    make_sandbox: Callable[..., Sandbox],
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
) -> None:
    """No cancel can have reached the provider (503), so its 455 proves no cancel took."""
    oid = order().order_id
    sandbox.set_faults(Faults(fail_next={"cancel-order": 1}))
    switching = _SwitchingClient(client, make_client(make_sandbox()))
    hooked = HookedClient(switching)  # type: ignore[arg-type]
    hooked.after_cancel.append(switching.switch)
    daemon = make_daemon(client=hooked)

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.NOT_FOUND
    assert final.reason == "provider does not know the order (455) and no cancel reached it"
    assert states_in_history(ledger, oid)[-2:] == ["cancelling", "not_found"]
    truth = truth_of(sandbox, oid)
    assert (truth["cancel_calls"], truth["cancels_accepted"]) == (1, 0)


def test_cancels_refused_until_the_margin_closes_are_never_called_sent(
    ledger: Ledger,
    sandbox: Sandbox,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    """Every cancel answered 503 reached nobody: paused retries until the margin, then a refusal
    that says no cancel was sent (not "5 cancels sent", not a person's problem)."""
    oid = order(send_in=REFUSE + timedelta(minutes=1)).order_id
    sandbox.set_faults(Faults(fail_next={"cancel-order": 1000}))

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.CANCEL_REFUSED
    assert final.reason == "margin closed before the cancel could be sent"
    truth = truth_of(sandbox, oid)
    assert truth["cancels_accepted"] == 0
    assert truth["cancel_calls"] == final.cancel_attempts > 5
    assert ledger.history(oid)[-1].details["maybe_delivered"] == 0
    assert clock.now() < final.send_at - REFUSE + timedelta(seconds=1)


# -- transient errors until the margin closes ---------------------------------------------------


def test_unreadable_provider_until_the_margin_closes_refuses_when_no_cancel_was_sent(
    ledger: Ledger,
    sandbox: Sandbox,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    oid = order(send_in=timedelta(minutes=20)).order_id
    refuse_edge = clock.now() + timedelta(minutes=20) - REFUSE
    sandbox.set_faults(Faults(error_rate=1.0, endpoints=frozenset({"get-report"})))

    with capture_logs() as logs:
        run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.CANCEL_REFUSED
    assert "margin closed before the cancel could be sent" in (final.reason or "")
    truth = truth_of(sandbox, oid)
    assert truth["cancel_calls"] == 0
    # It kept trying with growing waits, and never waited past the refuse edge.
    assert truth["report_calls"] >= 5
    assert clock.now() < refuse_edge
    assert clock.slept == sorted(clock.slept[:5]) + clock.slept[5:]
    assert clock.slept[4] > clock.slept[0] * 4
    retries = events_named(logs, "provider_retry")
    assert [r["failures"] for r in retries] == list(range(1, len(retries) + 1))


def test_unreadable_provider_after_a_possible_cancel_needs_attention(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    oid = order(send_in=timedelta(minutes=20)).order_id
    sandbox.set_faults(Faults(drop_next={"cancel-order": 1}))  # done, answer lost
    hooked = HookedClient(client)
    hooked.after_cancel.append(
        lambda: sandbox.set_faults(Faults(error_rate=1.0, endpoints=frozenset({"get-report"})))
    )
    daemon = make_daemon(client=hooked)

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.NEEDS_ATTENTION
    assert "cancel may have been sent but could not be verified" in (final.reason or "")
    truth = truth_of(sandbox, oid)
    assert (truth["state"], truth["cancel_calls"]) == ("cancelled", 1)
    assert clock.now() < final.send_at - REFUSE


def test_a_cancel_answered_503_then_unreadable_until_the_margin_closes_is_refused(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
) -> None:
    """A 503 proves the cancel never arrived: nothing went out, so the order is cancel_refused."""
    oid = order(send_in=timedelta(minutes=20)).order_id
    sandbox.set_faults(Faults(fail_next={"cancel-order": 1}))  # refused, work not done
    hooked = HookedClient(client)
    hooked.after_cancel.append(
        lambda: sandbox.set_faults(Faults(error_rate=1.0, endpoints=frozenset({"get-report"})))
    )
    daemon = make_daemon(client=hooked)

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.CANCEL_REFUSED
    assert "margin closed before the cancel could be sent" in (final.reason or "")
    truth = truth_of(sandbox, oid)
    assert (truth["state"], truth["cancel_calls"], truth["cancels_accepted"]) == ("pending", 1, 0)
    assert [e.to_state for e in ledger.history(oid)][-2:] == [
        OrderState.CANCELLING,
        OrderState.CANCEL_REFUSED,
    ]


def test_a_burst_of_503s_on_the_precheck_is_waited_out(
    ledger: Ledger,
    sandbox: Sandbox,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    oid = order().order_id
    sandbox.set_faults(Faults(fail_next={"get-report": 3}))

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.CANCELLED
    assert final.check_attempts == 5  # three failures, the pre-check, the verification
    assert len(clock.slept) == 3
    assert truth_of(sandbox, oid)["cancel_calls"] == 1


# -- refuse, warn, dispatch --------------------------------------------------------------------


def test_refuse_step_refuses_requests_inside_the_margin_without_calling_the_provider(
    ledger: Ledger,
    sandbox: Sandbox,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    at_edge = order(send_in=timedelta(minutes=10)).order_id
    inside = order(send_in=timedelta(minutes=9)).order_id
    outside = order(send_in=timedelta(minutes=10, microseconds=1)).order_id
    clock.advance(5 * 60)  # at_edge now has exactly refuse_before left

    report = run_pass_within(daemon, PASS_TIMEOUT)

    assert report.refused == 2
    for oid in (at_edge, inside):
        final = ledger.get(oid)
        assert final.state is OrderState.CANCEL_REFUSED
        assert final.cancel_attempts == 0
        assert truth_of(sandbox, oid)["report_calls"] == 0
    assert ledger.get(outside).state is OrderState.CANCELLED


def test_cancel_at_risk_is_warned_once_per_order_with_seconds_left_and_attempts(
    ledger: Ledger,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    at_risk = order(send_in=timedelta(minutes=14)).order_id
    order(send_in=timedelta(hours=2))  # not at risk: cancelled in the first pass
    # Another daemon holds the claim, so the order stays pending across our passes.
    ledger.store.claim(
        at_risk,
        OrderState.CANCEL_REQUESTED,
        owner=OTHER_HOST_OWNER,
        expires_at=clock.now() + timedelta(hours=1),
        now=clock.now(),
    )

    with capture_logs() as logs:
        first = run_pass_within(daemon, PASS_TIMEOUT)
        clock.advance(30)
        second = run_pass_within(daemon, PASS_TIMEOUT)

    warnings = events_named(logs, "cancel_at_risk")
    assert (first.warned, second.warned) == (1, 0)
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert warnings[0]["order_id"] == at_risk
    assert warnings[0]["seconds_left"] == 14 * 60
    assert warnings[0]["attempts"] == 0
    assert ledger.get(at_risk).warned_at == START


def test_a_cancelling_order_inside_warn_before_is_warned_with_its_attempts(
    ledger: Ledger,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
    live_pid: int,
) -> None:
    """A live daemon of this host holds it mid-cancel (second attempt) through both passes."""
    oid = order(send_in=timedelta(minutes=12)).order_id
    owner = owner_on_this_host(live_pid)
    stale_cancelling(
        ledger, oid, owner=owner, expires_at=clock.now() + LEASE, now=clock.now(), attempts=2
    )

    with capture_logs() as logs:
        run_pass_within(daemon, PASS_TIMEOUT)
        run_pass_within(daemon, PASS_TIMEOUT)

    warnings = events_named(logs, "cancel_at_risk")
    assert [(w["order_id"], w["state"], w["attempts"]) for w in warnings] == [
        (oid, "cancelling", 2)
    ]


def test_dispatch_step_marks_scheduled_orders_past_their_send_time_dispatched(
    ledger: Ledger,
    sandbox: Sandbox,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    past = order(send_in=timedelta(minutes=1), cancel=False).order_id
    exactly_now = order(send_in=timedelta(minutes=2), cancel=False).order_id
    later = order(send_in=timedelta(minutes=2, microseconds=1), cancel=False).order_id
    clock.advance(120)

    report = run_pass_within(daemon, PASS_TIMEOUT)

    assert report.dispatched == 2
    assert ledger.get(past).state is OrderState.DISPATCHED
    assert ledger.get(exactly_now).state is OrderState.DISPATCHED
    assert ledger.get(past).reason == "send time passed with no cancel requested"
    assert ledger.get(later).state is OrderState.SCHEDULED
    assert sandbox.truth()["totals"]["get-report"]["requests"] == 0


# -- claims and recovery -----------------------------------------------------------------------


def test_a_request_claimed_by_another_live_daemon_is_not_touched(
    ledger: Ledger,
    sandbox: Sandbox,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    oid = order().order_id
    expires = clock.now() + LEASE
    ledger.store.claim(
        oid,
        OrderState.CANCEL_REQUESTED,
        owner=OTHER_HOST_OWNER,
        expires_at=expires,
        now=clock.now(),
    )

    report = run_pass_within(daemon, PASS_TIMEOUT)

    after = ledger.get(oid)
    assert (after.state, after.claim_owner, after.claim_expires_at) == (
        OrderState.CANCEL_REQUESTED,
        OTHER_HOST_OWNER,
        expires,
    )
    assert report.started == 0
    assert truth_of(sandbox, oid)["report_calls"] == 0


def test_an_in_flight_cancel_of_a_live_daemon_on_this_host_is_not_taken(
    ledger: Ledger,
    sandbox: Sandbox,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
    live_pid: int,
) -> None:
    oid = order().order_id
    owner = owner_on_this_host(live_pid)
    stale_cancelling(ledger, oid, owner=owner, expires_at=clock.now() + LEASE, now=clock.now())
    clock.advance(LEASE.total_seconds() - 1)  # one second before its lease ends

    report = run_pass_within(daemon, PASS_TIMEOUT)

    after = ledger.get(oid)
    assert (after.state, after.claim_owner) == (OrderState.CANCELLING, owner)
    assert report.recovered == 0
    truth = truth_of(sandbox, oid)
    assert (truth["report_calls"], truth["cancel_calls"]) == (0, 0)


def test_an_expired_claim_is_recovered_by_verification_without_a_second_cancel(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    oid = order().order_id
    stale_cancelling(
        ledger, oid, owner=OTHER_HOST_OWNER, expires_at=clock.now() + LEASE, now=clock.now()
    )
    client.cancel_order(oid)  # the other daemon's cancel reached the provider before it died
    clock.advance(LEASE.total_seconds())  # the lease has run out

    with capture_logs() as logs:
        report = run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.CANCELLED
    assert final.cancel_attempts == 1
    assert report.recovered == 1
    truth = truth_of(sandbox, oid)
    assert (truth["cancel_calls"], truth["cancels_accepted"]) == (1, 1)
    [recovered] = events_named(logs, "stale_claim_recovered")
    assert (recovered["previous_owner"], recovered["reason"]) == (OTHER_HOST_OWNER, "lease expired")


def test_a_dead_daemons_cancelling_order_is_verified_at_once_with_no_new_cancel(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    oid = order().order_id
    gone = owner_on_this_host(dead_pid())
    stale_cancelling(ledger, oid, owner=gone, expires_at=clock.now() + LEASE, now=clock.now())
    client.cancel_order(oid)

    with capture_logs() as logs:
        run_pass_within(daemon, PASS_TIMEOUT)  # no clock advance: the lease is still running

    final = ledger.get(oid)
    assert final.state is OrderState.CANCELLED
    assert final.cancel_attempts == 1
    assert truth_of(sandbox, oid)["cancel_calls"] == 1
    [recovered] = events_named(logs, "stale_claim_recovered")
    assert recovered["reason"] == "owner gone"
    assert events_named(logs, "cancel_recovering")[0]["previous_attempts"] == 1


@pytest.mark.parametrize("crashed_ago", [0.0, 60.0], ids=["just-now", "a-minute-ago"])
def test_a_crash_before_the_cancel_left_is_resent_only_after_verification_proves_pending(
    crashed_ago: float,
    ledger: Ledger,
    sandbox: Sandbox,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    """The crashed daemon's cancel may have left: it gets the settle period, counted from when
    `cancelling` was recorded, before a 456 allows another."""
    oid = order().order_id
    recorded = clock.now() - timedelta(seconds=crashed_ago)
    stale_cancelling(
        ledger,
        oid,
        owner=owner_on_this_host(dead_pid()),
        expires_at=clock.now() + LEASE,
        now=recorded,
    )

    run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.CANCELLED
    assert final.cancel_attempts == 2
    history = ledger.history(oid)
    assert [e.to_state.value for e in history][-3:] == ["cancelling", "cancelling", "cancelled"]
    assert (history[-2].at - recorded).total_seconds() >= SETTLE
    truth = truth_of(sandbox, oid)
    assert (truth["cancel_calls"], truth["cancels_accepted"]) == (1, 1)
    if crashed_ago > SETTLE:  # settled already: one verification, then the cancel
        assert truth["report_calls"] == 2


def test_a_stale_claim_whose_order_cannot_be_read_needs_attention(
    ledger: Ledger,
    sandbox: Sandbox,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    oid = order(send_in=timedelta(minutes=30)).order_id
    stale_cancelling(ledger, oid, owner=OTHER_HOST_OWNER, expires_at=clock.now(), now=clock.now())
    sandbox.set_faults(Faults(error_rate=1.0))

    run_pass_within(daemon, PASS_TIMEOUT)

    assert ledger.get(oid).state is OrderState.NEEDS_ATTENTION
    assert sandbox.truth()["totals"]["cancel-order"]["requests"] == 0


def test_rejected_credentials_leave_the_request_pending_and_release_the_claim(
    ledger: Ledger,
    sandbox: Sandbox,
    make_client: Callable[..., IletiMerkeziClient],
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
) -> None:
    oid = order().order_id
    daemon = make_daemon(client=make_client(sandbox, key="wrong-key"))

    with capture_logs() as logs:
        daemon.run_pass()
        wait_for(
            lambda: sandbox.truth()["totals"]["get-report"]["codes"].get("401"),
            timeout=10,
            what="a get-report answered 401",
        )
        assert daemon.stop(grace=10.0)

    after = ledger.get(oid)
    assert (after.state, after.claim_owner, after.claim_expires_at) == (
        OrderState.CANCEL_REQUESTED,
        None,
        None,
    )
    assert after.cancel_attempts == 0
    assert sandbox.truth()["totals"]["cancel-order"]["requests"] == 0
    assert events_named(logs, "provider_credentials_rejected")
    assert all(
        e["reason"] == "credentials rejected" for e in events_named(logs, "cancel_left_for_later")
    )


def test_rejected_credentials_end_the_pass_after_one_try(
    ledger: Ledger,
    sandbox: Sandbox,
    make_client: Callable[..., IletiMerkeziClient],
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
) -> None:
    oid = order().order_id
    daemon = make_daemon(client=make_client(sandbox, key="wrong-key"))

    run_pass_within(daemon, 2.0)

    assert ledger.get(oid).state is OrderState.CANCEL_REQUESTED
    assert sandbox.truth()["totals"]["get-report"]["requests"] == 1


# -- fenced claims, the send-time sweep, stuck calls, finished orders ---------------------------


def test_a_worker_whose_claim_lapsed_during_the_precheck_sends_no_cancel(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    """Recording `cancelling` is fenced: a claim that expired (by the lease clock) during the
    pre-check is lost even though nobody took it yet; the order is left for a fresh claim."""
    oid = order().order_id
    hooked = HookedClient(client)
    lapse = [LEASE.total_seconds() + 1]
    hooked.after_report.append(lambda _report: clock.advance(lapse.pop()) if lapse else None)
    daemon = make_daemon(client=hooked)

    with capture_logs() as logs:
        run_pass_within(daemon, PASS_TIMEOUT)

    # The lapsed worker gave up before any cancel; a fresh claim did the work, once.
    [lost] = events_named(logs, "cancel_claim_lost")
    assert lost["state"] == "cancel_requested"
    final = ledger.get(oid)
    assert (final.state, final.cancel_attempts) == (OrderState.CANCELLED, 1)
    truth = truth_of(sandbox, oid)
    assert (truth["report_calls"], truth["cancel_calls"], truth["cancels_accepted"]) == (3, 1, 1)


def test_an_expired_claim_is_never_renewed_even_by_its_owner(
    ledger: Ledger, order: Callable[..., Order], clock: FakeClock
) -> None:
    oid = order().order_id
    store = ledger.store
    now = clock.now()
    assert store.claim(
        oid, OrderState.CANCEL_REQUESTED, owner="w1", expires_at=now + LEASE, now=now
    )
    later = now + LEASE / 2
    renewed = store.renew(
        oid, OrderState.CANCEL_REQUESTED, owner="w1", expires_at=later + LEASE, now=later
    )
    assert renewed is not None and renewed.claim_expires_at == later + LEASE
    expired = later + LEASE
    lost = store.renew(
        oid, OrderState.CANCEL_REQUESTED, owner="w1", expires_at=expired + LEASE, now=expired
    )
    assert lost is None
    assert (
        store.renew(oid, OrderState.CANCEL_REQUESTED, owner="w2", expires_at=now + LEASE, now=now)
        is None
    )


def test_rejected_credentials_during_verification_end_needs_attention_at_the_send_time(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_client: Callable[..., IletiMerkeziClient],
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    placed = order()
    oid = placed.order_id
    hooked = HookedClient(client)
    wrong = make_client(sandbox, key="wrong-key")

    def credentials_revoked() -> None:
        hooked._client = wrong  # every read after the cancel answers 401

    hooked.after_cancel.append(credentials_revoked)
    daemon = make_daemon(client=hooked)

    run_pass_within(daemon, PASS_TIMEOUT)
    assert ledger.get(oid).state is OrderState.CANCELLING  # unverifiable, left for later

    clock.set(placed.send_at + timedelta(seconds=1))
    with capture_logs():
        run_pass_within(daemon, PASS_TIMEOUT)

    final = ledger.get(oid)
    assert final.state is OrderState.NEEDS_ATTENTION
    assert final.reason == (
        "send time passed with the cancel unverified: one may have reached the provider"
    )
    assert truth_of(sandbox, oid)["cancel_calls"] == 1


def test_a_crashed_sequence_ends_needs_attention_at_the_send_time(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    placed = order()
    oid = placed.order_id
    hooked = HookedClient(client)

    def bug(_report: object) -> None:
        if hooked.cancel_calls:
            raise RuntimeError("a bug in verification")

    hooked.after_report.append(bug)
    daemon = make_daemon(client=hooked)

    with capture_logs() as logs:
        run_pass_within(daemon, PASS_TIMEOUT)
    assert events_named(logs, "cancel_sequence_crashed")
    assert ledger.get(oid).state is OrderState.CANCELLING

    clock.set(placed.send_at)
    run_pass_within(daemon, PASS_TIMEOUT)

    assert ledger.get(oid).state is OrderState.NEEDS_ATTENTION
    assert truth_of(sandbox, oid)["cancel_calls"] == 1


def test_a_call_that_hangs_holds_one_worker_while_the_other_orders_are_cancelled(
    ledger: Ledger,
    sandbox: Sandbox,
    client: IletiMerkeziClient,
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
) -> None:
    ids = [order().order_id for _ in range(6)]
    hooked = HookedClient(client)
    hooked.holds[ids[0]] = release = threading.Event()
    daemon = make_daemon(client=hooked, max_concurrent_cancels=3)
    try:
        daemon.run_pass()
        wait_for(
            lambda: all(ledger.get(oid).state is OrderState.CANCELLED for oid in ids[1:]),
            timeout=PASS_TIMEOUT,
            what="the other orders cancelled",
        )
        assert ledger.get(ids[0]).state is OrderState.CANCELLING
    finally:
        release.set()
    assert daemon.wait_idle(PASS_TIMEOUT)
    assert ledger.get(ids[0]).state is OrderState.CANCELLED


def test_a_service_daemon_keeps_no_finished_order_for_a_pass_that_did_not_ask(
    ledger: Ledger, daemon: Daemon, order: Callable[..., Order]
) -> None:
    ids = [order().order_id for _ in range(3)]
    daemon.run_pass()  # as `serve` does: nobody waits for these
    assert daemon.wait_idle(PASS_TIMEOUT)
    assert {ledger.get(oid).state for oid in ids} == {OrderState.CANCELLED}

    report = run_pass_within(daemon, PASS_TIMEOUT)

    assert report.finished == []
    later = order().order_id
    assert [o.order_id for o in run_pass_within(daemon, PASS_TIMEOUT).finished] == [later]


# -- claims of daemons alive in this process or dead on this host -----------------------------


def test_a_second_daemon_in_the_same_process_does_not_take_a_live_daemons_claim(
    ledger: Ledger,
    sandbox: Sandbox,
    make_daemon: Callable[..., Daemon],
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    oid = order().order_id
    first = make_daemon(owner=make_owner())
    second = make_daemon(owner=make_owner())
    # `first` is alive in this process and has just recorded its cancel as in flight.
    stale_cancelling(
        ledger, oid, owner=first.owner, expires_at=clock.now() + LEASE, now=clock.now()
    )

    report = run_pass_within(second, PASS_TIMEOUT)

    assert report.recovered == 0
    after = ledger.get(oid)
    assert (after.state, after.claim_owner) == (OrderState.CANCELLING, first.owner)
    assert truth_of(sandbox, oid)["report_calls"] == 0


def test_a_dead_daemons_precheck_claim_is_taken_at_once(
    ledger: Ledger,
    sandbox: Sandbox,
    daemon: Daemon,
    order: Callable[..., Order],
    clock: FakeClock,
) -> None:
    oid = order().order_id
    ledger.store.claim(
        oid,
        OrderState.CANCEL_REQUESTED,
        owner=owner_on_this_host(dead_pid()),
        expires_at=clock.now() + LEASE,
        now=clock.now(),
    )

    run_pass_within(daemon, PASS_TIMEOUT)

    assert ledger.get(oid).state is OrderState.CANCELLED
    assert truth_of(sandbox, oid)["cancel_calls"] == 1


# -- logs ---------------------------------------------------------------------------------------


def test_log_lines_of_a_pass_never_carry_the_credentials(
    sandbox: Sandbox, daemon: Daemon, order: Callable[..., Order]
) -> None:
    for _ in range(3):
        order()
    sandbox.set_faults(Faults(fail_next={"cancel-order": 1, "get-report": 1}))

    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        run_pass_within(daemon, PASS_TIMEOUT)

    text = repr(logs)
    assert KEY not in text
    assert HASH not in text
    calls = events_named(logs, "provider_call")
    assert {c["endpoint"] for c in calls} == {"get-report", "cancel-order"}
    assert all("duration_ms" in c and "code" in c for c in calls)
    assert all("attempt" in c for c in calls if c["endpoint"] == "cancel-order")
