"""The alerts outbox: alert rows written with what causes them, claimed and marked by senders.

An alert about a state change is inserted by `Store.transition` / `transition_due` in the same
transaction as the change (`AlertPolicy.on_transition`), so a crash never loses one and a
rolled-back change never alerts. Alerts that are not state changes (`raise_alert`: credentials
rejected, clock skew, at-risk warnings) are written when detected, at most one per kind per
`RATE_LIMIT`. Delivery (HTTP, retries) is the daemon's (`scheduler.alerting`); this module only
runs the queries, through the store's transactions.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, RowMapping

from ledger.models import AlertRow, Order
from ledger.states import OrderState

if TYPE_CHECKING:
    from ledger.store import Store

__all__ = [
    "PENDING",
    "RATE_LIMIT",
    "Alert",
    "AlertPolicy",
    "alert_text",
    "claim_due",
    "count_pending",
    "mark_delivered",
    "mark_failed",
    "raise_alert",
    "recent",
]

alerts_t: sa.Table = AlertRow.__table__  # type: ignore[attr-defined]

PENDING = "pending"
DELIVERED = "delivered"
GIVEN_UP = "given_up"
#: At most one alert of a kind that is not a state change per this long.
RATE_LIMIT = timedelta(minutes=10)

#: What each state alert says after "order X".
_STATE_TEXT = {
    OrderState.NEEDS_ATTENTION: "needs attention: a person must check it at the provider",
    OrderState.TOO_LATE: "could not be cancelled: the provider had started sending it",
    OrderState.CANCEL_REFUSED: "was not cancelled: the cancel came inside the refuse margin",
    OrderState.CANCELLED: "was cancelled",
    OrderState.NOT_FOUND: "is not known to the provider",
}


@dataclass(frozen=True)
class Alert:
    """One alert as the outbox holds it."""

    alert_id: str
    event: str
    order_id: str | None
    state: str | None
    reason: str | None
    send_at: datetime | None
    label: str | None
    at: datetime
    text: str
    status: str
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    delivered_at: datetime | None

    def payload(self) -> dict[str, Any]:
        """The JSON body a receiver gets (the issue's shape, times in ISO 8601 UTC)."""
        return {
            "alert_id": self.alert_id,
            "event": self.event,
            "order_id": self.order_id,
            "state": self.state,
            "reason": self.reason,
            "send_at": self.send_at.isoformat() if self.send_at else None,
            "label": self.label,
            "at": self.at.isoformat(),
            "text": self.text,
        }


def _alert(row: RowMapping) -> Alert:
    return Alert(**{f: row[f] for f in Alert.__dataclass_fields__})


def alert_text(event: str, order: Order | None, reason: str | None) -> str:
    """One human sentence (chat webhooks show `text` as it is)."""
    if order is None:
        return f"smsledger: {event.replace('_', ' ')}: {reason or 'no detail'}."
    label = f" ({order.label})" if order.label else ""
    what = _STATE_TEXT.get(order.state, f"is {order.state.value}")
    if event == "cancel_at_risk":
        what = "may not be cancelled in time"
    why = f" ({reason})" if reason else ""
    return (
        f"smsledger: order {order.order_id}{label}, sending at "
        f"{order.send_at.isoformat(timespec='seconds')}, {what}{why}."
    )


def _row(event: str, order: Order | None, reason: str | None, now: datetime) -> dict[str, Any]:
    return {
        "alert_id": uuid.uuid4().hex,
        "event": event,
        "order_id": order.order_id if order else None,
        "state": order.state.value if order else None,
        "reason": reason,
        "send_at": order.send_at if order else None,
        "label": order.label if order else None,
        "at": now,
        "text": alert_text(event, order, reason),
        "status": PENDING,
        "attempts": 0,
        "next_attempt_at": now,
    }


@dataclass(frozen=True)
class AlertPolicy:
    """Which events are recorded (`[alerts] events`); set on a store when alerts are on."""

    events: frozenset[str]

    def on_transition(
        self, conn: Connection, orders: Iterable[Order], to_state: OrderState, reason: str,
        now: datetime,
    ) -> None:  # fmt: skip
        """Insert the alerts `orders` entering `to_state` cause, inside the caller's transaction."""
        if to_state.value not in self.events:
            return
        rows = [_row(to_state.value, o, reason, now) for o in orders]
        if rows:
            conn.execute(alerts_t.insert(), rows)


def raise_alert(
    store: Store,
    policy: AlertPolicy | None,
    event: str,
    *,
    now: datetime,
    reason: str,
    order: Order | None = None,
) -> bool:
    """Record an alert that is not a state change, unless one of its kind is younger than
    `RATE_LIMIT` (or the event is not asked for); True when it was recorded."""
    if policy is None or event not in policy.events:
        return False
    recent_one = (
        sa.select(alerts_t.c.alert_id)
        .where(alerts_t.c.event == event)
        .where(alerts_t.c.at > now - RATE_LIMIT)
        .limit(1)
    )
    with store.write() as conn:
        if conn.execute(recent_one).first() is not None:
            return False
        conn.execute(alerts_t.insert(), [_row(event, order, reason, now)])
    return True


def claim_due(
    store: Store, *, owner: str, now: datetime, expires_at: datetime, limit: int
) -> list[Alert]:
    """Claim up to `limit` pending alerts due by `now` that nobody holds; oldest first.

    As orders are claimed (`Store.claim_next`): ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, the
    write lock on SQLite, and the guard repeated in the update.
    """
    free = sa.or_(alerts_t.c.claim_owner.is_(None), alerts_t.c.claim_expires_at <= now)
    due = sa.and_(alerts_t.c.status == PENDING, alerts_t.c.next_attempt_at <= now, free)
    pick = sa.select(alerts_t.c.alert_id).where(due).order_by(alerts_t.c.at).limit(limit)
    if store.dialect == "postgresql":
        cte = pick.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        pick = sa.select(cte.c.alert_id)
    stmt = (
        alerts_t.update()
        .where(alerts_t.c.alert_id.in_(pick))
        .where(due)
        .values(claim_owner=owner, claim_expires_at=expires_at)
        .returning(*alerts_t.c)
    )
    with store.write() as conn:
        claimed = [_alert(r) for r in conn.execute(stmt).mappings()]
    return sorted(claimed, key=lambda a: a.at)


def mark_delivered(store: Store, alert_id: str, *, owner: str, now: datetime) -> None:
    _finish(store, alert_id, owner, status=DELIVERED, delivered_at=now, last_error=None)


def mark_failed(
    store: Store, alert_id: str, *, owner: str, error: str, retry_at: datetime | None
) -> None:
    """Record a failed delivery: retried at `retry_at`, or given up when it is None."""
    if retry_at is None:
        _finish(store, alert_id, owner, status=GIVEN_UP, last_error=error)
    else:
        _finish(store, alert_id, owner, status=PENDING, last_error=error, next_attempt_at=retry_at)


def _finish(store: Store, alert_id: str, owner: str, **values: Any) -> None:
    stmt = (
        alerts_t.update()
        .where(alerts_t.c.alert_id == alert_id)
        .where(alerts_t.c.claim_owner == owner)
        .values(claim_owner=None, claim_expires_at=None, attempts=alerts_t.c.attempts + 1, **values)
    )
    with store.write() as conn:
        conn.execute(stmt)


def recent(store: Store, *, pending_only: bool = False, limit: int = 50) -> list[Alert]:
    """The newest alerts first (only those still to deliver with `pending_only`)."""
    stmt = sa.select(alerts_t).order_by(alerts_t.c.at.desc()).limit(limit)
    if pending_only:
        stmt = stmt.where(alerts_t.c.status == PENDING)
    with store.read() as conn:
        return [_alert(r) for r in conn.execute(stmt).mappings()]


def count_pending(store: Store) -> int:
    stmt = sa.select(sa.func.count()).select_from(alerts_t).where(alerts_t.c.status == PENDING)
    with store.read() as conn:
        return int(conn.execute(stmt).scalar_one())
