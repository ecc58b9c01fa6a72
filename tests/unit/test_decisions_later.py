"""What the provider's word read later means for orders already final for the cancel work: the
dispatch follow-up and the needs_attention re-check (`scheduler.decisions`). Never a cancel, and
never `not_found` for an order whose cancel may have been sent without a person."""

from __future__ import annotations

import pytest

from ledger import OrderState
from ledger.states import is_legal
from scheduler.decisions import Reading, after_follow_up, after_recheck
from scheduler.provider.client import Report, ReportStatus

S = OrderState
CODES = {
    ReportStatus.PENDING: 456,
    ReportStatus.SENDING: 113,
    ReportStatus.COMPLETED: 114,
    ReportStatus.NOT_SENT: 115,
    ReportStatus.NOT_FOUND: 455,
}

FOLLOW_UP = {
    ReportStatus.COMPLETED: Reading(None),
    ReportStatus.SENDING: Reading(None, again=True),
    ReportStatus.PENDING: Reading(None, again=True),
    ReportStatus.NOT_SENT: Reading(
        S.CANCELLED, "cancelled outside smsledger (provider reports 115)"
    ),
    ReportStatus.NOT_FOUND: Reading(
        S.NOT_FOUND, "provider does not know the order (455) after its send time"
    ),
}

RECHECK = {
    (ReportStatus.NOT_SENT, True): Reading(S.CANCELLED, "verified later: provider reports 115"),
    (ReportStatus.NOT_SENT, False): Reading(S.CANCELLED, "verified later: provider reports 115"),
    (ReportStatus.NOT_FOUND, True): Reading(
        S.CANCELLED, "verified later: provider no longer lists the order (455) after our cancel"
    ),
    (ReportStatus.NOT_FOUND, False): Reading(None, again=True),
    (ReportStatus.SENDING, True): Reading(
        S.TOO_LATE, "verified later: provider reports the order sending (113)"
    ),
    (ReportStatus.COMPLETED, True): Reading(
        S.TOO_LATE, "verified later: provider reports the order sent (114)"
    ),
    (ReportStatus.PENDING, True): Reading(None, again=True),
}


def report(status: ReportStatus) -> Report:
    return Report(order_id="312891245", status=status, code=CODES[status])


def test_every_report_status_is_decided_for_the_follow_up() -> None:
    assert set(FOLLOW_UP) == set(ReportStatus)


@pytest.mark.parametrize("status", list(ReportStatus), ids=str)
def test_follow_up_of_a_dispatched_order(status: ReportStatus) -> None:
    reading = after_follow_up(report(status))
    assert reading == FOLLOW_UP[status]
    if reading.state is not None:
        assert is_legal(S.DISPATCHED, reading.state)


@pytest.mark.parametrize(("status", "cancel_sent"), list(RECHECK), ids=str)
def test_recheck_of_a_needs_attention_order(status: ReportStatus, cancel_sent: bool) -> None:
    reading = after_recheck(report(status), cancel_sent=cancel_sent)
    assert reading == RECHECK[status, cancel_sent]
    if reading.state is not None:
        assert is_legal(S.NEEDS_ATTENTION, reading.state)  # without a person


def test_a_455_without_a_cancel_of_ours_is_left_for_a_person() -> None:
    """The provider may never have known the order: only a person may say not_found."""
    reading = after_recheck(report(ReportStatus.NOT_FOUND), cancel_sent=False)
    assert reading.state is None
    assert not is_legal(S.NEEDS_ATTENTION, S.NOT_FOUND)
