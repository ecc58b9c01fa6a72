"""The daemons' periodic work in the ledger: whose turn a shared job is, and which orders are due
a provider read (the dispatch follow-up, the `needs_attention` re-check).

A job (reconcile) is one row of ``smsledger_jobs``. A daemon takes its turn with one guarded
conditional update: it applies only when the last run started at least one period ago and no
live claim holds the row, so with several daemons on one ledger (SQLite or PostgreSQL) exactly
one wins each period, and the others learn it from the row count. Times are the lease clock's
(`Store.lease_now`: the database's on PostgreSQL), one clock for daemons on several hosts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from ledger.models import JobRow, Order, OrderRow
from ledger.states import OrderState
from ledger.store import Store, _order

__all__ = ["JobSeen", "due_reads", "end_turn", "job", "take_turn"]

jobs_t: sa.Table = JobRow.__table__  # type: ignore[attr-defined]
_orders_t: sa.Table = OrderRow.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class JobSeen:
    """One job's row: when its last run started, and who runs it now (claim live or not)."""

    name: str
    last_run_at: datetime | None
    claim_owner: str | None
    claim_expires_at: datetime | None


def take_turn(
    store: Store, name: str, *, owner: str, now: datetime, every: timedelta, lease: timedelta
) -> bool:
    """Claim this period's run of job `name` for `owner`; True only for the one daemon that won.

    Wins when the last run started `every` or longer before `now` (or never) and nobody holds a
    live claim (a run still going, or one whose daemon died less than `lease` ago). The winning
    update records `now` as the run's start and the claim until `now + lease`, in one statement.
    """
    _ensure_row(store, name)
    stmt = (
        jobs_t.update()
        .where(jobs_t.c.name == name)
        .where(sa.or_(jobs_t.c.last_run_at.is_(None), jobs_t.c.last_run_at <= now - every))
        .where(sa.or_(jobs_t.c.claim_owner.is_(None), jobs_t.c.claim_expires_at <= now))
        .values(last_run_at=now, claim_owner=owner, claim_expires_at=now + lease)
    )
    with store.write() as conn:
        return conn.execute(stmt).rowcount == 1


def end_turn(store: Store, name: str, *, owner: str) -> None:
    """Release our claim on job `name` (its run ended); the period still counts from its start."""
    stmt = (
        jobs_t.update()
        .where(jobs_t.c.name == name)
        .where(jobs_t.c.claim_owner == owner)
        .values(claim_owner=None, claim_expires_at=None)
    )
    with store.write() as conn:
        conn.execute(stmt)


def job(store: Store, name: str) -> JobSeen | None:
    """Job `name`'s row, None before any daemon took a turn at it."""
    with store.read() as conn:
        row = conn.execute(sa.select(jobs_t).where(jobs_t.c.name == name)).mappings().first()
    return None if row is None else JobSeen(**{f: row[f] for f in JobSeen.__dataclass_fields__})


def _ensure_row(store: Store, name: str) -> None:
    """Insert the job's row unless it exists (daemons racing here each succeed or do nothing)."""
    dialect = postgresql if store.dialect == "postgresql" else sqlite
    stmt = dialect.insert(jobs_t).values(name=name).on_conflict_do_nothing(index_elements=["name"])
    with store.write() as conn:
        conn.execute(stmt)


def due_reads(
    store: Store,
    state: OrderState,
    *,
    sent_after: datetime,
    sent_by: datetime | None,
    read_before: datetime,
    reread_codes: Sequence[int] | None,
    limit: int,
) -> list[Order]:
    """Orders in `state` sent in (`sent_after`, `sent_by`] (no upper end when None) that are
    due a provider read: never read yet (no ``delivery_checked_at``), or last read before
    `read_before` with a last code in `reread_codes` (any code when None). Least recently read
    first, at most `limit`."""
    c = _orders_t.c
    again = c.delivery_checked_at < read_before
    if reread_codes is not None:
        again = sa.and_(again, c.last_provider_code.in_(list(reread_codes)))
    stmt = (
        sa.select(_orders_t)
        .where(c.state == state.value)
        .where(c.send_at > sent_after)
        .where(sa.or_(c.delivery_checked_at.is_(None), again))
        .order_by(c.delivery_checked_at.asc().nulls_first(), c.send_at)
        .limit(limit)
    )
    if sent_by is not None:
        stmt = stmt.where(c.send_at <= sent_by)
    with store.read() as conn:
        return [_order(r) for r in conn.execute(stmt).mappings()]
