"""The ledger's tables (SQLModel) and the plain values the library hands out.

Rows never leave the store module: callers get frozen `Order` and `Event` values, so nothing outside
the store can change a row behind the transition function's back.

The tables live in a registry and `METADATA` of their own, never on SQLModel's process-wide
``SQLModel.metadata``: an application's ``SQLModel.metadata.create_all()`` does not create them,
and its own models may use any names. Every table's name starts with ``smsledger_`` (tables added
later too), so a ledger can share a database or schema with the application's tables.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

from ledger.inputs import ORDER_ID_MAX
from ledger.states import OrderState

__all__ = [
    "ALERTS_TABLE",
    "DAEMONS_TABLE",
    "DELIVERY_COLUMNS",
    "EVENTS_TABLE",
    "JOBS_TABLE",
    "LEAD_OBSERVATIONS_TABLE",
    "METADATA",
    "ORDERS_TABLE",
    "AlertRow",
    "DaemonRow",
    "Delivery",
    "Event",
    "EventRow",
    "JobRow",
    "LeadObservationRow",
    "Order",
    "OrderRow",
    "UTCDateTime",
]

ORDERS_TABLE = "smsledger_orders"
EVENTS_TABLE = "smsledger_order_events"
ALERTS_TABLE = "smsledger_alerts"
DAEMONS_TABLE = "smsledger_daemons"
LEAD_OBSERVATIONS_TABLE = "smsledger_lead_observations"
JOBS_TABLE = "smsledger_jobs"
#: The orders' delivery counters, as the provider names them.
DELIVERY_COLUMNS = ("total", "delivered", "undelivered", "waiting")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Stores aware datetimes as naive UTC and hands them back aware.

    SQLite has no time zones and PostgreSQL's would convert to the session zone; naive UTC in the
    column compares correctly on both and in index range scans.
    """

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime reached the ledger; convert at the boundary")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC)


_REGISTRY = registry()
#: Every table of the ledger, and nothing else: what Alembic compares the revisions against.
METADATA = _REGISTRY.metadata


class _LedgerModel(SQLModel, registry=_REGISTRY):
    """Base of the ledger's tables: SQLModel with the private registry (an abstract class)."""


class OrderRow(_LedgerModel, table=True):
    """One scheduled order and where it stands."""

    __tablename__ = ORDERS_TABLE
    __table_args__ = (
        sa.Index(f"ix_{ORDERS_TABLE}_state_send_at", "state", "send_at"),
        # A campaign is a label: cancel, list and summary read it in order-id pages (r0007).
        sa.Index(f"ix_{ORDERS_TABLE}_label_order_id", "label", "order_id"),
    )

    order_id: str = Field(sa_column=sa.Column(sa.String(ORDER_ID_MAX), primary_key=True))
    send_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    state: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    label: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text, nullable=True))
    cancel_requested_at: datetime | None = Field(
        default=None, sa_column=sa.Column(UTCDateTime(), nullable=True)
    )
    cancel_attempts: int = Field(
        default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0")
    )
    check_attempts: int = Field(
        default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0")
    )
    last_provider_code: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    warned_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    claim_owner: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    claim_expires_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    created_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    # The provider's delivery counters (get-report / get-reports), null until read (rev. 0004).
    total: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    delivered: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    undelivered: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    waiting: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    delivery_checked_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))


class EventRow(_LedgerModel, table=True):
    """One state change; rows are only ever inserted."""

    __tablename__ = EVENTS_TABLE

    # 64 bits everywhere: SQLite's INTEGER PRIMARY KEY already is (and must stay INTEGER to be the
    # rowid); PostgreSQL's is BIGINT since schema revision 0002.
    id: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    )
    order_id: str = Field(
        sa_column=sa.Column(
            sa.String(ORDER_ID_MAX),
            sa.ForeignKey(f"{ORDERS_TABLE}.order_id"),
            nullable=False,
            index=True,
        )
    )
    at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    from_state: str | None = Field(default=None, sa_column=sa.Column(sa.String(32)))
    to_state: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    details: dict[str, Any] | None = Field(default=None, sa_column=sa.Column(sa.JSON))


class AlertRow(_LedgerModel, table=True):
    """One alert to deliver (a transactional outbox): written with what causes it, sent later.

    `status` is ``pending`` until a receiver answered 2xx (``delivered``) or
    `give_up_after_seconds` passed (``given_up``). Senders claim a row like an order
    (`claim_owner`, `claim_expires_at`), so each alert is sent by one daemon at a time.
    """

    __tablename__ = ALERTS_TABLE
    __table_args__ = (sa.Index(f"ix_{ALERTS_TABLE}_status_next_at", "status", "next_attempt_at"),)

    alert_id: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    event: str = Field(sa_column=sa.Column(sa.String(32), nullable=False))
    order_id: str | None = Field(default=None, sa_column=sa.Column(sa.String(ORDER_ID_MAX)))
    state: str | None = Field(default=None, sa_column=sa.Column(sa.String(32)))
    reason: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    send_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    label: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False, index=True))
    text: str = Field(sa_column=sa.Column(sa.Text, nullable=False))
    status: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    attempts: int = Field(
        default=0, sa_column=sa.Column(sa.Integer, nullable=False, server_default="0")
    )
    next_attempt_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_error: str | None = Field(default=None, sa_column=sa.Column(sa.Text))
    delivered_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    claim_owner: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    claim_expires_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))


class DaemonRow(_LedgerModel, table=True):
    """One daemon's heartbeat: written every pass, read by `cancel`, `check` and `summary`."""

    __tablename__ = DAEMONS_TABLE

    owner: str = Field(sa_column=sa.Column(sa.String(128), primary_key=True))
    host: str = Field(sa_column=sa.Column(sa.String(255), nullable=False))
    pid: int = Field(sa_column=sa.Column(sa.Integer, nullable=False))
    version: str = Field(sa_column=sa.Column(sa.String(64), nullable=False))
    started_at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    last_pass_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))


class LeadObservationRow(_LedgerModel, table=True):
    """One get-report answer about an order with time left: a fact about its queue lead.

    `seconds_left` is the bound the answer proves, taken at the edge of the call that keeps it
    safe: from the call's start for a 456 (the lead is less), from its end for 113/114 (the lead
    is at least). A probe first claims its (order, step) with `status` NULL, so daemons sharing
    the ledger probe an order at most once per step; the answer then fills the row in.
    """

    __tablename__ = LEAD_OBSERVATIONS_TABLE
    __table_args__ = (
        sa.UniqueConstraint(
            "order_id", "probe_step", name=f"{LEAD_OBSERVATIONS_TABLE}_probe_step_key"
        ),
        sa.Index(f"ix_{LEAD_OBSERVATIONS_TABLE}_at", "at"),
    )

    id: int | None = Field(
        default=None,
        sa_column=sa.Column(sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    )
    order_id: str = Field(
        sa_column=sa.Column(
            sa.String(ORDER_ID_MAX),
            sa.ForeignKey(f"{ORDERS_TABLE}.order_id"),
            nullable=False,
            index=True,
        )
    )
    at: datetime = Field(sa_column=sa.Column(UTCDateTime(), nullable=False))
    seconds_left: float | None = Field(default=None, sa_column=sa.Column(sa.Float))
    #: 456, 113 or 114; NULL while a probe's call is under way (or after it failed).
    status: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    #: precheck, verify or probe.
    source: str = Field(sa_column=sa.Column(sa.String(16), nullable=False))
    probe_step: int | None = Field(default=None, sa_column=sa.Column(sa.Integer))
    #: How long the provider call took (wall time), for the suggested margin's call allowance.
    duration_ms: float | None = Field(default=None, sa_column=sa.Column(sa.Float))


class JobRow(_LedgerModel, table=True):
    """One periodic job shared by every daemon on the ledger (e.g. reconcile): who runs it now
    and when it last started, so only one daemon runs it per period (see `ledger.jobs`)."""

    __tablename__ = JOBS_TABLE

    name: str = Field(sa_column=sa.Column(sa.String(64), primary_key=True))
    last_run_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))
    claim_owner: str | None = Field(default=None, sa_column=sa.Column(sa.String(128)))
    claim_expires_at: datetime | None = Field(default=None, sa_column=sa.Column(UTCDateTime()))


@dataclass(frozen=True)
class Order:
    """A snapshot of one order as the ledger holds it."""

    order_id: str
    send_at: datetime
    state: OrderState
    label: str | None
    reason: str | None
    cancel_requested_at: datetime | None
    cancel_attempts: int
    check_attempts: int
    last_provider_code: int | None
    warned_at: datetime | None
    claim_owner: str | None
    claim_expires_at: datetime | None
    created_at: datetime
    updated_at: datetime
    #: The provider's delivery counters, None until read (see `Delivery`).
    total: int | None = None
    delivered: int | None = None
    undelivered: int | None = None
    waiting: int | None = None
    delivery_checked_at: datetime | None = None

    @property
    def delivery(self) -> Delivery | None:
        """The provider's delivery counters as last recorded, None when never read."""
        if self.delivery_checked_at is None:
            return None
        return Delivery(
            total=self.total,
            delivered=self.delivered,
            undelivered=self.undelivered,
            waiting=self.waiting,
            checked_at=self.delivery_checked_at,
        )

    def seconds_left(self, now: datetime) -> float:
        """Seconds from `now` until dispatch; negative once the send time has passed."""
        return (self.send_at - now).total_seconds()


@dataclass(frozen=True)
class Delivery:
    """What the provider reported of an order's messages, and when it was recorded."""

    total: int | None
    delivered: int | None
    undelivered: int | None
    waiting: int | None
    checked_at: datetime


@dataclass(frozen=True)
class Event:
    """One row of an order's history."""

    order_id: str
    at: datetime
    from_state: OrderState | None
    to_state: OrderState
    reason: str | None
    details: dict[str, Any] = field(default_factory=dict)
