"""The pure decisions of the cancel-and-verify sequence, and the margin edges they rest on."""

from __future__ import annotations

import itertools
import random
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time

from ledger import OrderState, utcnow
from ledger.margins import Window, window
from scheduler.decisions import (
    Decision,
    Next,
    after_precheck,
    after_verify,
    backoff_delay,
    retry_fits,
    settle_pause,
    too_many_cancels,
    unresolved,
)
from scheduler.provider.client import Report, ReportStatus

CODES = {
    ReportStatus.PENDING: 456,
    ReportStatus.SENDING: 113,
    ReportStatus.COMPLETED: 114,
    ReportStatus.NOT_SENT: 115,
    ReportStatus.NOT_FOUND: 455,
}
SEND_AT = datetime(2026, 12, 1, 7, 0, tzinfo=UTC)
WARN = timedelta(minutes=15)
REFUSE = timedelta(minutes=5)
US = timedelta(microseconds=1)


def report(status: ReportStatus) -> Report:
    return Report(order_id="312891245", status=status, code=CODES[status])


def test_every_report_status_has_a_code_in_these_tests() -> None:
    """A new ReportStatus member must be added here, and so to every table below."""
    assert set(CODES) == set(ReportStatus)


# -- after_precheck --------------------------------------------------------------------------

PRECHECK = {
    ReportStatus.PENDING: (Next.SEND_CANCEL, None, ""),
    ReportStatus.SENDING: (Next.FINISH, OrderState.TOO_LATE, "113"),
    ReportStatus.COMPLETED: (Next.FINISH, OrderState.TOO_LATE, "114"),
    ReportStatus.NOT_SENT: (Next.FINISH, OrderState.CANCELLED, "already not sent at provider"),
    ReportStatus.NOT_FOUND: (Next.FINISH, OrderState.NOT_FOUND, "455"),
}


@pytest.mark.parametrize("status", list(ReportStatus), ids=str)
def test_precheck_answer_decides_whether_a_cancel_is_sent(status: ReportStatus) -> None:
    """Only a pending order (456) gets a cancel; every other pre-check answer is final."""
    expected_next, expected_state, reason_part = PRECHECK[status]
    decision = after_precheck(report(status))
    assert isinstance(decision, Decision)
    assert decision.next is expected_next
    assert decision.state is expected_state
    assert reason_part in decision.reason


def test_precheck_of_an_order_not_sent_says_so_in_the_reason() -> None:
    decision = after_precheck(report(ReportStatus.NOT_SENT))
    assert decision.reason.startswith("already not sent at provider")


# -- after_verify ----------------------------------------------------------------------------

_Expected = tuple[Next, OrderState | None]
_CANCELLED: _Expected = (Next.FINISH, OrderState.CANCELLED)
_TOO_LATE = (Next.FINISH, OrderState.TOO_LATE)
_SEND = (Next.SEND_CANCEL, None)
_ATTENTION = (Next.FINISH, OrderState.NEEDS_ATTENTION)
VERIFY: dict[ReportStatus, dict[Window, _Expected]] = {
    ReportStatus.NOT_SENT: dict.fromkeys(Window, _CANCELLED),
    ReportStatus.NOT_FOUND: dict.fromkeys(Window, _CANCELLED),
    ReportStatus.SENDING: dict.fromkeys(Window, _TOO_LATE),
    ReportStatus.COMPLETED: dict.fromkeys(Window, _TOO_LATE),
    ReportStatus.PENDING: {
        Window.OPEN: _SEND,
        Window.WARN: _SEND,
        Window.REFUSE: _ATTENTION,
        Window.PAST: _ATTENTION,
    },
}


@pytest.mark.parametrize("where", list(Window), ids=str)
@pytest.mark.parametrize("status", list(ReportStatus), ids=str)
def test_verify_answer_in_each_window(status: ReportStatus, where: Window) -> None:
    """115/455 prove the cancel took, 113/114 close the window, 456 allows another cancel only
    while outside the refuse margin."""
    expected_next, expected_state = VERIFY[status][where]
    decision = after_verify(report(status), where)
    assert decision.next is expected_next
    assert decision.state is expected_state
    if expected_state is not None:
        assert decision.reason


def test_verify_reasons_name_the_provider_code() -> None:
    assert "115" in after_verify(report(ReportStatus.NOT_SENT), Window.OPEN).reason
    assert "455" in after_verify(report(ReportStatus.NOT_FOUND), Window.OPEN).reason
    attention = after_verify(report(ReportStatus.PENDING), Window.REFUSE)
    assert "456" in attention.reason
    assert "refuse margin" in attention.reason


# -- unresolved ------------------------------------------------------------------------------


def test_unresolved_after_a_possible_cancel_needs_a_person() -> None:
    decision = unresolved(True, "ProviderTransientError: 503")
    assert decision == Decision(
        Next.FINISH,
        OrderState.NEEDS_ATTENTION,
        "cancel may have been sent but could not be verified: ProviderTransientError: 503",
    )


def test_unresolved_before_any_cancel_is_a_refusal() -> None:
    decision = unresolved(False, "ReadTimeout")
    assert decision.next is Next.FINISH
    assert decision.state is OrderState.CANCEL_REFUSED
    assert decision.reason.endswith("ReadTimeout")


# -- backoff_delay ---------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", range(12))
def test_backoff_delay_stays_between_half_and_the_whole_ceiling(attempt: int) -> None:
    rng = random.Random(attempt)
    ceiling = min(30.0, 0.5 * 2**attempt)
    delays = [backoff_delay(attempt, rng=rng) for _ in range(500)]
    assert all(ceiling / 2 <= d <= ceiling for d in delays)
    # Jittered, not a constant: the draws spread over most of the range.
    assert max(delays) - min(delays) > ceiling / 2 * 0.9


def test_backoff_delay_doubles_until_the_cap() -> None:
    """The expected delay doubles with each failure, then stays at the cap."""
    means = []
    for attempt in range(10):
        rng = random.Random(7)
        means.append(sum(backoff_delay(attempt, rng=rng) for _ in range(400)) / 400)
    for before, after in itertools.pairwise(means):
        if after < 30.0 * 0.75 * 0.95:  # below the cap: roughly twice the previous
            assert after == pytest.approx(2 * before, rel=0.1)
    assert means[-1] == pytest.approx(30.0 * 0.75, rel=0.05)
    rng = random.Random(1)
    assert all(15.0 <= backoff_delay(n, rng=rng) <= 30.0 for n in (6, 7, 20, 60, 1000))


def test_backoff_delay_respects_base_and_cap_arguments() -> None:
    rng = random.Random(3)
    assert 0.05 <= backoff_delay(0, base=0.1, cap=10, rng=rng) <= 0.1
    assert 1.5 <= backoff_delay(5, base=0.1, cap=3, rng=rng) <= 3.0


def test_backoff_delay_treats_a_negative_attempt_as_the_first() -> None:
    rng = random.Random(5)
    assert all(0.25 <= backoff_delay(-3, rng=rng) <= 0.5 for _ in range(100))


def test_backoff_delay_is_reproducible_with_a_seeded_rng() -> None:
    first = [backoff_delay(n, rng=random.Random(42)) for n in range(8)]
    second = [backoff_delay(n, rng=random.Random(42)) for n in range(8)]
    assert first == second


def test_backoff_delay_without_an_rng_uses_the_module_random() -> None:
    assert 0.5 <= backoff_delay(1) <= 1.0


# -- margin edges: window and retry_fits, with a frozen clock ----------------------------------

EDGES = [
    # (time left before send_at, window)
    (WARN + US, Window.OPEN),
    (WARN, Window.WARN),
    (WARN - US, Window.WARN),
    (REFUSE + US, Window.WARN),
    (REFUSE, Window.REFUSE),
    (REFUSE - US, Window.REFUSE),
    (US, Window.REFUSE),
    (timedelta(0), Window.PAST),
    (-US, Window.PAST),
]


@pytest.mark.parametrize(("left", "expected"), EDGES, ids=[str(left) for left, _ in EDGES])
def test_window_edges_belong_to_the_stricter_side(left: timedelta, expected: Window) -> None:
    with freeze_time(SEND_AT - left):
        assert window(SEND_AT, utcnow(), WARN, REFUSE) is expected


@pytest.mark.parametrize(
    ("left", "fits"),
    [
        (REFUSE + 2 * US, True),
        (REFUSE + US, True),
        (REFUSE, False),
        (REFUSE - US, False),
        (WARN, True),
        (timedelta(0), False),
    ],
    ids=str,
)
def test_retry_now_fits_only_strictly_outside_the_refuse_margin(
    left: timedelta, fits: bool
) -> None:
    with freeze_time(SEND_AT - left):
        assert retry_fits(utcnow(), 0.0, SEND_AT, REFUSE) is fits


def test_retry_fits_counts_the_delay_to_the_microsecond() -> None:
    """A wait that would end exactly on the refuse edge does not fit; one microsecond less does."""
    with freeze_time(SEND_AT - REFUSE - timedelta(seconds=2)) as frozen:
        now = utcnow()
        assert retry_fits(now, 1.999999, SEND_AT, REFUSE)
        assert not retry_fits(now, 2.0, SEND_AT, REFUSE)
        assert not retry_fits(now, 2.000001, SEND_AT, REFUSE)
        frozen.tick(timedelta(seconds=2) - US)  # one microsecond before the edge
        now = utcnow()
        assert window(SEND_AT, now, WARN, REFUSE) is Window.WARN
        assert retry_fits(now, 0.0, SEND_AT, REFUSE)
        assert not retry_fits(now, 0.000001, SEND_AT, REFUSE)
        frozen.tick(US)  # exactly refuse_before left
        now = utcnow()
        assert window(SEND_AT, now, WARN, REFUSE) is Window.REFUSE
        assert not retry_fits(now, 0.0, SEND_AT, REFUSE)


def test_margins_of_zero_refuse_keep_the_send_time_itself_past() -> None:
    """With no refuse margin, an order refuses nothing until its send time, which is past."""
    with freeze_time(SEND_AT - US):
        assert window(SEND_AT, utcnow(), WARN, timedelta(0)) is Window.WARN
        assert retry_fits(utcnow(), 0.0, SEND_AT, timedelta(0))
    with freeze_time(SEND_AT):
        assert window(SEND_AT, utcnow(), WARN, timedelta(0)) is Window.PAST
        assert not retry_fits(utcnow(), 0.0, SEND_AT, timedelta(0))


def test_pending_after_the_margin_closed_with_no_cancel_delivered_is_refused() -> None:
    """Every cancel refused with a 503, none delivered: cancel_refused, not a person's."""
    decision = after_verify(report(ReportStatus.PENDING), Window.REFUSE, cancel_sent=False)

    assert (decision.next, decision.state) == (Next.FINISH, OrderState.CANCEL_REFUSED)


# -- settling: a lagging report after a cancel that may have arrived ------------------------


@pytest.mark.parametrize("where", list(Window), ids=str)
@pytest.mark.parametrize("status", list(ReportStatus), ids=str)
def test_while_settling_only_a_pending_answer_changes_meaning(
    status: ReportStatus, where: Window
) -> None:
    """Inside the settle period 456 means "read again", never "send another cancel"; every other
    answer (and 456 once the margin closed) decides as it does after the settle period."""
    settling = after_verify(report(status), where, settling=True)
    settled = after_verify(report(status), where, settling=False)
    if status is ReportStatus.PENDING and where in (Window.OPEN, Window.WARN):
        assert (settling.next, settling.state) == (Next.READ_AGAIN, None)
        assert settled.next is Next.SEND_CANCEL
    else:
        assert settling == settled


@pytest.mark.parametrize("where", list(Window), ids=str)
def test_a_455_proves_a_cancel_only_after_one_may_have_been_delivered(where: Window) -> None:
    delivered = after_verify(report(ReportStatus.NOT_FOUND), where, cancel_sent=True)
    none_delivered = after_verify(report(ReportStatus.NOT_FOUND), where, cancel_sent=False)

    assert (delivered.next, delivered.state) == (Next.FINISH, OrderState.CANCELLED)
    assert none_delivered == Decision.finish(
        OrderState.NOT_FOUND, "provider does not know the order (455) and no cancel reached it"
    )


def test_pending_when_the_margin_closed_after_a_possible_cancel_does_not_claim_it_failed() -> None:
    """The report may only lag: the reason says pending after a cancel that MAY have arrived."""
    decision = after_verify(report(ReportStatus.PENDING), Window.PAST, settling=True)

    assert decision.state is OrderState.NEEDS_ATTENTION
    assert "did not take" not in decision.reason
    assert "may have reached" in decision.reason


def test_too_many_cancels_counts_only_cancels_that_may_have_arrived() -> None:
    assert too_many_cancels(5, 5) == Decision.finish(
        OrderState.NEEDS_ATTENTION,
        "provider still reports the order pending (456) after 5 cancels that may have reached it",
    )
    mixed = too_many_cancels(5, 8)
    assert mixed.reason.endswith(
        "after 5 cancels that may have reached it; 3 more refused before reaching it"
    )
    assert "sent" not in mixed.reason


@pytest.mark.parametrize("reads", range(8))
def test_settle_pause_grows_like_the_backoff_and_never_outlasts_the_settle_period(
    reads: int,
) -> None:
    rng_a, rng_b = random.Random(reads), random.Random(reads)
    assert settle_pause(reads, 1000.0, cap=8.0, rng=rng_a) == backoff_delay(
        reads, cap=8.0, rng=rng_b
    )
    assert settle_pause(reads, 0.1, cap=8.0, rng=random.Random(0)) <= 0.1
    assert settle_pause(reads, -3.0, cap=8.0, rng=random.Random(0)) == 0.0


def test_the_first_settle_pause_is_about_half_a_second() -> None:
    pauses = [settle_pause(0, 20.0, rng=random.Random(n)) for n in range(50)]
    assert all(0.25 <= p <= 0.5 for p in pauses)
