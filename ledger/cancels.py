"""What a cancel request does to one order, decided once for `request_cancel` and for campaigns.

`decide_cancel` is pure (the order, the time and the margins in; a `CancelDecision` out), so
`Ledger.request_cancel` and `Ledger.request_cancel_many` apply the margins the same way by
construction. `CancelSummary` is what a cancel of many orders (a list of ids, or every order of a
label) reports: one `CancelOutcome` per order and the count of each.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple, Protocol

from ledger.errors import CancelNotPossible, CancelRefused
from ledger.margins import Margins, Window
from ledger.models import Order
from ledger.states import OrderState

__all__ = [
    "ALREADY_CANCELLING",
    "ON_TRACK",
    "REQUESTED_REASON",
    "CancelDecider",
    "CancelDecision",
    "CancelOutcome",
    "CancelResult",
    "CancelSummary",
    "Cancellable",
    "decide_cancel",
    "refusal",
]

#: The reason a requested cancel records.
REQUESTED_REASON = "cancel requested"
#: Asking again for a cancel that is already under way (or done) changes nothing.
ALREADY_CANCELLING = frozenset(
    {OrderState.CANCEL_REQUESTED, OrderState.CANCELLING, OrderState.CANCELLED}
)


class CancelOutcome(StrEnum):
    """What one cancel request came to; every order of a many-order cancel gets exactly one."""

    REQUESTED = "requested"  # now cancel_requested, outside the warn margin
    WARNED = "warned"  # now cancel_requested, inside the warn margin: the cancel may come late
    REFUSED = "refused"  # inside the refuse margin or past its send time: now cancel_refused
    ALREADY = "already"  # already cancel_requested, cancelling or cancelled: unchanged
    FINAL = "final"  # in another final state (too_late, dispatched, ...): unchanged
    UNKNOWN = "unknown"  # the id is not in the ledger


#: Outcomes that leave an order on its way to being cancelled (or cancelled).
ON_TRACK = frozenset({CancelOutcome.REQUESTED, CancelOutcome.WARNED, CancelOutcome.ALREADY})


class CancelDecision(NamedTuple):
    """The change a cancel request makes to an order: `to_state` None means none.

    A named tuple rather than a frozen dataclass: a campaign makes 100,000 of them, and a tuple
    is built in a fraction of the time.
    """

    outcome: CancelOutcome
    seconds_left: float
    to_state: OrderState | None = None
    reason: str | None = None


class Cancellable(Protocol):
    """What `decide_cancel` reads of an order: an `Order`, or a campaign batch's `Brief`."""

    @property
    def state(self) -> OrderState: ...

    @property
    def send_at(self) -> datetime: ...


def decide_cancel(order: Cancellable, now: datetime, margins: Margins) -> CancelDecision:
    """Decide what asking to cancel `order` at `now` does, under the margins."""
    return CancelDecider(now, margins)(order)


class CancelDecider:
    """`decide_cancel` for many orders at one `now` (a campaign's batch): the margins' edges
    are computed once, not once per order."""

    __slots__ = ("margins", "now", "where")

    def __init__(self, now: datetime, margins: Margins) -> None:
        self.now = now
        self.margins = margins
        self.where = margins.windows(now)

    def __call__(self, order: Cancellable) -> CancelDecision:
        send_at, now = order.send_at, self.now
        left = (send_at - now).total_seconds()
        if order.state in ALREADY_CANCELLING:
            return CancelDecision(CancelOutcome.ALREADY, left)
        if order.state is not OrderState.SCHEDULED:
            return CancelDecision(CancelOutcome.FINAL, left)
        where = self.where(send_at)
        if where is Window.REFUSE or where is Window.PAST:
            reason = self.margins.refusal(send_at, now)
            return CancelDecision(CancelOutcome.REFUSED, left, OrderState.CANCEL_REFUSED, reason)
        outcome = CancelOutcome.WARNED if where is Window.WARN else CancelOutcome.REQUESTED
        return CancelDecision(outcome, left, OrderState.CANCEL_REQUESTED, REQUESTED_REASON)


def refusal(order: Order, outcome: CancelOutcome, seconds_left: float) -> CancelNotPossible | None:
    """The error `request_cancel` raises for this outcome on `order` (as it stands after the
    decision), or None when the order is on its way to being cancelled."""
    if outcome is CancelOutcome.REFUSED or order.state in (
        OrderState.CANCEL_REFUSED,
        OrderState.DISPATCHED,
    ):
        return CancelRefused(order, seconds_left)
    if outcome is CancelOutcome.FINAL:
        return CancelNotPossible(order)  # too_late / not_found / needs_attention
    return None


@dataclass(frozen=True, slots=True)
class CancelResult:
    """One order of a many-order cancel: its outcome and the state it is in afterwards.

    `state` and `send_at` are None for an unknown id. Kept small on purpose: a campaign of
    100,000 orders holds 100,000 of these, not full `Order` values.
    """

    order_id: str
    outcome: CancelOutcome
    state: OrderState | None
    send_at: datetime | None


@dataclass(frozen=True)
class CancelSummary:
    """What `Ledger.request_cancel_many` did (or, with ``dry_run``, would do).

    The counts add up to the number of orders: `requested` and `warned` are both now
    ``cancel_requested`` (`warned` inside the warn margin), `refused` now ``cancel_refused``,
    `already` were requested, cancelling or cancelled before, `final` are in another final state
    and untouched, `unknown` are ids the ledger does not know. `earliest_refused_send_at` is the
    earliest send time among the refused.
    """

    results: tuple[CancelResult, ...]
    dry_run: bool = False
    counts: dict[CancelOutcome, int] = field(init=False)

    def __post_init__(self) -> None:
        counted = Counter(result.outcome for result in self.results)
        object.__setattr__(self, "counts", {outcome: counted[outcome] for outcome in CancelOutcome})

    @classmethod
    def of(cls, results: Iterable[CancelResult], *, dry_run: bool = False) -> CancelSummary:
        return cls(tuple(results), dry_run)

    @property
    def requested(self) -> int:
        return self.counts[CancelOutcome.REQUESTED]

    @property
    def warned(self) -> int:
        return self.counts[CancelOutcome.WARNED]

    @property
    def refused(self) -> int:
        return self.counts[CancelOutcome.REFUSED]

    @property
    def already(self) -> int:
        return self.counts[CancelOutcome.ALREADY]

    @property
    def final(self) -> int:
        return self.counts[CancelOutcome.FINAL]

    @property
    def unknown(self) -> int:
        return self.counts[CancelOutcome.UNKNOWN]

    @property
    def earliest_refused_send_at(self) -> datetime | None:
        times = [
            r.send_at
            for r in self.results
            if r.outcome is CancelOutcome.REFUSED and r.send_at is not None
        ]
        return min(times, default=None)

    def __len__(self) -> int:
        return len(self.results)
