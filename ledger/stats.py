"""Figures about the whole ledger for metrics: orders per state and the oldest pending cancel.

Both read only the `(state, send_at)` index where they can: the grouped count is an index-only
scan (SQLite: a covering index; PostgreSQL: an index-only scan once vacuumed), and the oldest
cancel request reads the few rows in the two pending states through the index's range.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from ledger.models import OrderRow
from ledger.states import OrderState

if TYPE_CHECKING:
    from ledger.store import Store

__all__ = ["PENDING_CANCEL", "count_by_state", "oldest_cancel_request"]

orders_t: sa.Table = OrderRow.__table__  # type: ignore[attr-defined]

#: The states of a cancel asked and not yet settled.
PENDING_CANCEL = (OrderState.CANCEL_REQUESTED, OrderState.CANCELLING)


def count_by_state(store: Store) -> dict[OrderState, int]:
    """How many orders are in each state, every state present (0 included)."""
    stmt = sa.select(orders_t.c.state, sa.func.count()).group_by(orders_t.c.state)
    counts = dict.fromkeys(OrderState, 0)
    with store.read() as conn:
        for state, count in conn.execute(stmt):
            counts[OrderState(state)] = int(count)
    return counts


def oldest_cancel_request(store: Store) -> datetime | None:
    """When the oldest cancel still pending (requested or in progress) was asked, or None."""
    stmt = sa.select(sa.func.min(orders_t.c.cancel_requested_at)).where(
        orders_t.c.state.in_([s.value for s in PENDING_CANCEL])
    )
    with store.read() as conn:  # min() keeps the column's type: an aware UTC datetime
        value: datetime | None = conn.execute(stmt).scalar_one()
    return value
