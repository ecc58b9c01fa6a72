"""Order states and the one table of legal transitions."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["FINAL_STATES", "TRANSITIONS", "OrderState", "is_legal"]


class OrderState(StrEnum):
    """Where an order stands; the values are stored in the ledger and printed by the command."""

    SCHEDULED = "scheduled"  # registered, no cancel asked
    CANCEL_REQUESTED = "cancel_requested"  # cancel accepted locally, waiting for the daemon
    CANCELLING = "cancelling"  # the daemon committed to sending cancel-order (recorded before it)
    CANCELLED = "cancelled"  # verified by get-report: nothing will go out
    CANCEL_REFUSED = "cancel_refused"  # refused locally (refuse margin or past dispatch); no call
    TOO_LATE = "too_late"  # the provider says sending started or finished
    NOT_FOUND = "not_found"  # the provider does not know the order
    DISPATCHED = "dispatched"  # send time passed with no cancel asked
    NEEDS_ATTENTION = "needs_attention"  # the outcome could not be verified: a person must look


S = OrderState

#: Every legal (from, to) pair. ``None`` as from-state is the registration of a new order.
#: ``cancelling -> cancelling`` records a new cancel attempt (after a verification proved the order
#: still pending) or a takeover of an expired claim; each gets its own history row.
TRANSITIONS: frozenset[tuple[OrderState | None, OrderState]] = frozenset(
    {
        (None, S.SCHEDULED),
        (S.SCHEDULED, S.CANCEL_REQUESTED),
        (S.SCHEDULED, S.CANCEL_REFUSED),
        (S.SCHEDULED, S.DISPATCHED),
        (S.CANCEL_REQUESTED, S.CANCELLING),
        (S.CANCEL_REQUESTED, S.CANCELLED),  # pre-check: already not sent at the provider
        (S.CANCEL_REQUESTED, S.TOO_LATE),  # pre-check: sending or sent
        (S.CANCEL_REQUESTED, S.NOT_FOUND),  # pre-check: unknown to the provider
        (S.CANCEL_REQUESTED, S.CANCEL_REFUSED),  # the refuse margin closed before a cancel was sent
        (S.CANCELLING, S.CANCELLING),
        (S.CANCELLING, S.CANCELLED),
        (S.CANCELLING, S.TOO_LATE),
        (S.CANCELLING, S.NEEDS_ATTENTION),
        # Every cancel sent provably never reached the provider (503, connection refused) and
        # the margin closed before a verification could be read: no cancel call took effect.
        (S.CANCELLING, S.CANCEL_REFUSED),
        # Every cancel was refused (503, connection refused), so none can have reached the
        # provider, and the verification answered 455: the provider does not know the order (a
        # 455 proves a cancel took only after one may have been delivered).
        (S.CANCELLING, S.NOT_FOUND),
    }
)

#: States no automatic process leaves.
FINAL_STATES: frozenset[OrderState] = frozenset(
    {S.CANCELLED, S.CANCEL_REFUSED, S.TOO_LATE, S.NOT_FOUND, S.DISPATCHED, S.NEEDS_ATTENTION}
)


def is_legal(from_state: OrderState | None, to_state: OrderState) -> bool:
    """Tell whether the transition table allows this state change."""
    return (from_state, to_state) in TRANSITIONS
