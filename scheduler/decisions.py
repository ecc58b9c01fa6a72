"""Pure decisions of the cancel-and-verify sequence: what a provider answer means for an order.

Nothing here touches the ledger, the network or the clock; the daemon passes `now` in.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from ledger.margins import MARGIN_CLOSED, Window, retry_fits
from ledger.states import OrderState
from scheduler.provider.client import Report, ReportStatus
from scheduler.reconciling import cancelled_outside_reason

__all__ = [
    "Decision",
    "Next",
    "Reading",
    "after_follow_up",
    "after_precheck",
    "after_recheck",
    "after_verify",
    "backoff_delay",
    "margin_closed",
    "retry_fits",
    "settle_pause",
    "too_many_cancels",
    "unresolved",
]


class Next(StrEnum):
    """What the sequence does after a decision."""

    FINISH = "finish"  # move to `Decision.state` and stop
    SEND_CANCEL = "send_cancel"  # record cancelling and send cancel-order
    READ_AGAIN = "read_again"  # a cancel may still be settling: wait, then verify again


@dataclass(frozen=True)
class Decision:
    next: Next
    state: OrderState | None = None
    reason: str = ""

    @classmethod
    def finish(cls, state: OrderState, reason: str) -> Decision:
        return cls(Next.FINISH, state, reason)


_SEND = Decision(Next.SEND_CANCEL)
_READ_AGAIN = Decision(Next.READ_AGAIN)
#: Sending started or finished: the cancel window is closed, whatever step we are in.
_CLOSED = {
    ReportStatus.SENDING: Decision.finish(
        OrderState.TOO_LATE, "provider reports sending in progress (113)"
    ),
    ReportStatus.COMPLETED: Decision.finish(
        OrderState.TOO_LATE, "provider reports the order sent (114)"
    ),
}


def after_precheck(report: Report) -> Decision:
    """Decide from the get-report answer read before any cancel was sent."""
    match report.status:
        case ReportStatus.PENDING:
            return _SEND
        case ReportStatus.SENDING | ReportStatus.COMPLETED:
            return _CLOSED[report.status]
        case ReportStatus.NOT_SENT:
            return Decision.finish(OrderState.CANCELLED, "already not sent at provider (115)")
        case ReportStatus.NOT_FOUND:
            return Decision.finish(OrderState.NOT_FOUND, "provider does not know the order (455)")


def after_verify(
    report: Report, where: Window, *, cancel_sent: bool = True, settling: bool = False
) -> Decision:
    """Decide from the get-report answer read after a cancel-order was tried.

    `cancel_sent` is False when no cancel can have reached the provider (each was refused with a
    503 or a refused connection). `settling` is True while the last cancel that may have reached
    the provider is younger than the settle period: reports lag behind cancels, so a 456 then
    only means "read again later", never "send another cancel".

    115 proves the order will not go out. 455 proves the cancel took only when one may have been
    delivered; with none delivered the provider simply does not know the order, as at the
    pre-check. 456 after the settle period is the only thing that allows another cancel.
    """
    match report.status:
        case ReportStatus.NOT_SENT:
            return Decision.finish(OrderState.CANCELLED, "cancel verified: provider reports 115")
        case ReportStatus.NOT_FOUND if cancel_sent:
            return Decision.finish(
                OrderState.CANCELLED, "cancel verified: provider no longer lists the order (455)"
            )
        case ReportStatus.NOT_FOUND:
            return Decision.finish(
                OrderState.NOT_FOUND,
                "provider does not know the order (455) and no cancel reached it",
            )
        case ReportStatus.SENDING | ReportStatus.COMPLETED:
            return _CLOSED[report.status]
        case ReportStatus.PENDING:
            if where not in (Window.OPEN, Window.WARN):
                return margin_closed(cancel_sent)
            return _READ_AGAIN if settling else _SEND


def margin_closed(cancel_sent: bool) -> Decision:
    """Decide for an order still pending at the provider once the refuse margin has closed.

    `cancel_sent` is False when no cancel can have reached the provider (none was sent, or each
    was refused with a 503 or a refused connection): then nothing was cancelled, and we say so.
    """
    if cancel_sent:
        return Decision.finish(
            OrderState.NEEDS_ATTENTION,
            "provider still reports the order pending (456) after a cancel that may have reached"
            " it, and the refuse margin has closed",
        )
    return Decision.finish(OrderState.CANCEL_REFUSED, MARGIN_CLOSED)


def too_many_cancels(maybe_delivered: int, attempts: int) -> Decision:
    """Decide when the order still reads pending after the most cancels we send it.

    Only cancels that may have reached the provider count: one refused with a 503 was not sent,
    and the reason never says it was.
    """
    refused = attempts - maybe_delivered
    also = f"; {refused} more refused before reaching it" if refused > 0 else ""
    return Decision.finish(
        OrderState.NEEDS_ATTENTION,
        f"provider still reports the order pending (456) after {maybe_delivered} cancels that"
        f" may have reached it{also}",
    )


def unresolved(cancel_may_have_been_sent: bool, why: str) -> Decision:
    """Decide when the provider could not be read before the refuse margin closed."""
    if cancel_may_have_been_sent:
        return Decision.finish(
            OrderState.NEEDS_ATTENTION,
            f"cancel may have been sent but could not be verified: {why}",
        )
    return Decision.finish(OrderState.CANCEL_REFUSED, f"{MARGIN_CLOSED}: {why}")


def backoff_delay(
    attempt: int, *, base: float = 0.5, cap: float = 30.0, rng: random.Random | None = None
) -> float:
    """Exponential backoff with equal jitter: uniform in [c/2, c], c = min(cap, base * 2**attempt).

    Half the delay is kept so retries still spread out when many orders fail at once, and the
    other half is random so they do not fail again in step.
    """
    ceiling = min(cap, base * (2 ** max(0, attempt)))
    return (rng or random).uniform(ceiling / 2, ceiling)


def settle_pause(
    reads: int, remaining: float, *, cap: float = 30.0, rng: random.Random | None = None
) -> float:
    """The wait before re-reading an order whose cancel may still be settling.

    Growing, jittered pauses (`backoff_delay` of the re-reads made so far) so a lag of half a
    second costs one short wait and a slow provider is not polled hard; never longer than the
    `remaining` seconds of the settle period, so the decision to re-send is not delayed.
    """
    return max(0.0, min(backoff_delay(reads, cap=cap, rng=rng), remaining))


# -- the provider's word read later (the daemon's follow-up and re-check; never a cancel) --------


@dataclass(frozen=True)
class Reading:
    """What a later get-report means for an order already final for the cancel work.

    `state` is where it moves (None: it stays, the answer is only recorded); `again` says whether
    it is read again on a later pass (the provider has not said its last word).
    """

    state: OrderState | None
    reason: str = ""
    again: bool = False


def after_follow_up(report: Report) -> Reading:
    """Decide from the get-report of a `dispatched` order, read after its send time.

    114: the counters are recorded, nothing more to learn. 113 (or a 456 past the send time):
    recorded, read again later. 115: it never went out, cancelled outside smsledger. 455: the
    provider does not know the order.
    """
    match report.status:
        case ReportStatus.COMPLETED:
            return Reading(None)
        case ReportStatus.SENDING | ReportStatus.PENDING:
            return Reading(None, again=True)
        case ReportStatus.NOT_SENT:
            return Reading(OrderState.CANCELLED, cancelled_outside_reason(report.code))
        case ReportStatus.NOT_FOUND:
            return Reading(
                OrderState.NOT_FOUND, "provider does not know the order (455) after its send time"
            )


def after_recheck(report: Report, *, cancel_sent: bool) -> Reading:
    """Decide from a later get-report of a `needs_attention` order.

    115 proves nothing went out; 455 proves it too, but only when a cancel of ours was sent (else
    the provider may simply never have known it: a person decides). 113/114: it went out. 456: it
    stays for a person, and is read again later.
    """
    match report.status:
        case ReportStatus.NOT_SENT:
            return Reading(OrderState.CANCELLED, "verified later: provider reports 115")
        case ReportStatus.NOT_FOUND if cancel_sent:
            return Reading(
                OrderState.CANCELLED,
                "verified later: provider no longer lists the order (455) after our cancel",
            )
        case ReportStatus.SENDING | ReportStatus.COMPLETED:
            what = "sending" if report.status is ReportStatus.SENDING else "sent"
            return Reading(
                OrderState.TOO_LATE,
                f"verified later: provider reports the order {what} ({report.code})",
            )
        case ReportStatus.NOT_FOUND | ReportStatus.PENDING:
            return Reading(None, again=True)
