"""Order states and the one table of legal transitions."""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "BY_PERSON_ONLY",
    "FINAL_STATES",
    "RESOLVABLE",
    "SETTLING",
    "TRANSITIONS",
    "OrderState",
    "is_legal",
]


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
        # The provider's word read later (reconcile, the dispatch follow-up, the needs_attention
        # re-check) or a person's (`Ledger.resolve`); none of them ever sends a cancel.
        (S.SCHEDULED, S.CANCELLED),  # cancelled outside smsledger: get-report confirms 115
        (S.DISPATCHED, S.CANCELLED),  # the provider says 115: it never went out
        (S.DISPATCHED, S.NOT_FOUND),  # the follow-up's get-report answers 455
        (S.NEEDS_ATTENTION, S.CANCELLED),  # re-check: 115, or 455 after our cancel
        (S.NEEDS_ATTENTION, S.TOO_LATE),  # re-check: 113/114
        (S.NEEDS_ATTENTION, S.NOT_FOUND),  # only a person (BY_PERSON_ONLY)
    }
)

#: Transitions only a person may take (`Ledger.resolve`): no automatic process decides that the
#: provider never knew an order whose cancel may have been sent.
BY_PERSON_ONLY: frozenset[tuple[OrderState | None, OrderState]] = frozenset(
    {(S.NEEDS_ATTENTION, S.NOT_FOUND)}
)

#: The states the cancel work ends in: no cancel is sent, verified or retried from them. Only
#: the provider's word read later (`SETTLING`) or a person moves an order out of one.
FINAL_STATES: frozenset[OrderState] = frozenset(
    {S.CANCELLED, S.CANCEL_REFUSED, S.TOO_LATE, S.NOT_FOUND, S.DISPATCHED, S.NEEDS_ATTENTION}
)

#: The transitions that leave a final state: the provider's truth flowing back, or a person.
SETTLING: frozenset[tuple[OrderState | None, OrderState]] = frozenset(
    pair for pair in TRANSITIONS if pair[0] in FINAL_STATES
)

#: Where `Ledger.resolve` may settle a `needs_attention` order.
RESOLVABLE: frozenset[OrderState] = frozenset(
    to for from_, to in TRANSITIONS if from_ is S.NEEDS_ATTENTION
)


def is_legal(
    from_state: OrderState | None, to_state: OrderState, *, by_person: bool = False
) -> bool:
    """Tell whether the transition table allows this state change (`by_person`: asked by a
    person, which `BY_PERSON_ONLY` transitions need)."""
    pair = (from_state, to_state)
    return pair in TRANSITIONS and (by_person or pair not in BY_PERSON_ONLY)
