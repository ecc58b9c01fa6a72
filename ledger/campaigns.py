"""A campaign is a label: `LabelSummary` is what `Ledger.summary` says about each one."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ledger.states import OrderState

__all__ = ["LabelSummary"]


@dataclass(frozen=True)
class LabelSummary:
    """The orders of one label (None: orders without a label), as they stand.

    `states` counts the orders in every state (zero included); `next_send_at` is the earliest
    send time still to come among orders not in a final state; `at_risk` counts cancels asked for
    but not settled (``cancel_requested``, ``cancelling``) whose dispatch is inside the warn
    margin.
    """

    label: str | None
    states: dict[OrderState, int]
    next_send_at: datetime | None
    at_risk: int

    @property
    def total(self) -> int:
        return sum(self.states.values())
