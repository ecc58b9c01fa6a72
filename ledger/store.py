"""Every query the ledger runs: reads, claims and the one guarded transition.

Connections, transactions and what database errors mean live in `ledger.db.Database`; a `Store`
holds one (`store.db`) and only says what to read and write.

PostgreSQL runs the same statements at READ COMMITTED: every guarded update re-reads the row it
waited for, so its ``WHERE state = :expected`` still decides; claims of several rows at once use
``FOR UPDATE SKIP LOCKED`` so that daemons split the work instead of queueing behind each other.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Dialect, Engine, RowMapping

from ledger._log import get_logger
from ledger._urls import display_url
from ledger.db import Database
from ledger.errors import IllegalTransition, LedgerError
from ledger.models import DELIVERY_COLUMNS, Event, EventRow, Order, OrderRow
from ledger.outbox import AlertPolicy
from ledger.states import OrderState, is_legal

__all__ = [
    "Brief",
    "BulkChange",
    "BulkMismatch",
    "Change",
    "ConcurrentRegistration",
    "Store",
    "TransitionResult",
    "display_url",
    "seconds_left_detail",
]

log = get_logger("smsledger.ledger")

orders_t: sa.Table = OrderRow.__table__  # type: ignore[attr-defined]
events_t: sa.Table = EventRow.__table__  # type: ignore[attr-defined]
_ORDER_COLUMNS = [c.name for c in orders_t.columns]
_IN_CHUNK = 500  # ids per IN (...) lookup; well under SQLite's bound-parameter limit
#: Built once, parameters bound at execution: building a statement per call costs more than
#: running it (SQLAlchemy coerces every literal and computes a cache key each time).
_GET = sa.select(orders_t).where(orders_t.c.order_id == sa.bindparam("order_id"))
_SEND_TIMES_OF = sa.select(orders_t.c.order_id, orders_t.c.send_at).where(
    orders_t.c.order_id.in_(sa.bindparam("ids", expanding=True))
)
_NEW_ORDER_KEYS = (
    "order_id",
    "send_at",
    "state",
    "label",
    "reason",
    "cancel_attempts",
    "check_attempts",
    "created_at",
    "updated_at",
)
_NEW_EVENT_KEYS = ("order_id", "at", "to_state", "reason")
_EVENT_KEYS = ("order_id", "at", "from_state", "to_state", "reason", "details")


@functools.cache
def _driver_insert(table: sa.Table, keys: tuple[str, ...], dialect: Dialect) -> tuple[str, bool]:
    """An INSERT of `keys` as the driver takes it, and whether its parameters are positional."""
    compiled = table.insert().compile(dialect=dialect, column_keys=list(keys))
    if compiled.positional and tuple(compiled.positiontup or ()) != keys:
        raise AssertionError(f"{table.name}: keys must follow the table's column order")
    return str(compiled), compiled.positional


def _driver_rows(
    table: sa.Table, keys: tuple[str, ...], dialect: Dialect, rows: list[tuple[Any, ...]]
) -> tuple[str, list[Any]]:
    sql, positional = _driver_insert(table, keys, dialect)
    return sql, rows if positional else [dict(zip(keys, row, strict=True)) for row in rows]


#: Prefix of the bound parameters `_transition_update` sets columns from (a bound parameter may
#: not take a column's own name in an UPDATE's SET clause).
_SET = "_set_"
_EVENT_INSERT = events_t.insert()


@functools.cache
def _transition_update(
    keys: tuple[str, ...], increment: tuple[str, ...], owner: bool, unexpired: bool
) -> sa.Update:
    """The guarded UPDATE of `Store.transition` for one shape of change, built once.

    Built per call, the statement's construction and cache key were a fifth of the daemon's CPU
    per cancelled order; with bound parameters one object serves every order of a shape.
    """
    sets: dict[str, Any] = {
        key: sa.bindparam(_SET + key, type_=orders_t.c[key].type) for key in keys
    }
    for column in increment:
        sets[column] = orders_t.c[column] + 1
    stmt = (
        orders_t.update()
        .where(orders_t.c.order_id == sa.bindparam("_order_id"))
        .where(orders_t.c.state == sa.bindparam("_from_state"))
        .values(sets)
        .returning(*orders_t.c)
    )
    if owner:
        stmt = stmt.where(orders_t.c.claim_owner == sa.bindparam("_owner"))
    if unexpired:
        expires = orders_t.c.claim_expires_at
        stmt = stmt.where(expires > sa.bindparam("_unexpired_at", type_=expires.type))
    return stmt


#: The log level of a change into a state a person should look at (others log at info).
_LOUD = {
    OrderState.NEEDS_ATTENTION: "error",
    OrderState.TOO_LATE: "warning",
    OrderState.CANCEL_REFUSED: "warning",
    OrderState.NOT_FOUND: "warning",
}


class ConcurrentRegistration(LedgerError):
    """Another process registered one of these orders while this transaction ran (PostgreSQL).

    Nothing was written; registering again sees the other process's rows and decides as usual.
    """


@dataclass(frozen=True)
class TransitionResult:
    """The outcome of a guarded transition.

    `applied` is False when the order was not in the expected state (another process got there
    first, or the guard did not hold); `order` is then the order as it stands now (None if absent).
    """

    applied: bool
    order: Order | None


class Change(NamedTuple):
    """One state change `Store.transition_batch` is to apply: a guarded update and its event."""

    order_id: str
    from_state: OrderState
    to_state: OrderState
    reason: str
    details: Mapping[str, Any] | None = None


def seconds_left_detail(send_at: datetime, now: datetime) -> float:
    """The seconds from `now` to `send_at` a history row records: whole milliseconds, half up.

    Integer arithmetic, so a campaign's batch computes the same value in SQL (`BulkChange`)."""
    micros = (send_at - now) // _MICROSECOND
    return ((micros + 500) // 1000) / 1000


_MICROSECOND = timedelta(microseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class BulkChange(NamedTuple):
    """Changes `Store.transition_batch` writes set-based: every order of a label page in
    `from_state` whose send time is after `send_after` moves to `to_state` for `reason`, its
    history row holding ``{"seconds_left": ...}`` (`seconds_left_detail`, computed in SQL).

    A campaign's cancel writes its far-off orders so: two statements a batch instead of a row
    each way per order (bench/bulk_cancel.py). `covers` says which orders of a batch it takes;
    the caller decides the others one by one.
    """

    from_state: OrderState
    to_state: OrderState
    reason: str
    send_after: datetime

    def covers(self, brief: Brief) -> bool:
        return brief.state is self.from_state and brief.send_at > self.send_after


class BulkMismatch(LedgerError):
    """A set-based write took another number of orders than the batch read (PostgreSQL: an
    order of that label registered meanwhile); nothing of the batch was written."""


class Brief(NamedTuple):
    """What `Store.transition_batch` reads of each order: enough to decide, nothing more.

    A campaign's batch reads 100,000 of these; building full `Order` values cost more than the
    writes themselves.
    """

    order_id: str
    state: OrderState
    send_at: datetime


def _order(row: RowMapping | Mapping[str, Any]) -> Order:
    values = {name: row[name] for name in _ORDER_COLUMNS}
    values["state"] = OrderState(values["state"])
    return Order(**values)


def _event(row: RowMapping) -> Event:
    return Event(
        order_id=row["order_id"],
        at=row["at"],
        from_state=OrderState(row["from_state"]) if row["from_state"] else None,
        to_state=OrderState(row["to_state"]),
        reason=row["reason"],
        details=row["details"] or {},
    )


def _is_duplicate_key(exc: sa.exc.IntegrityError) -> bool:
    sqlstate = getattr(exc.orig, "sqlstate", None)  # psycopg
    return sqlstate == "23505" or "UNIQUE constraint failed" in str(exc.orig)


def _datetime_to_db(dialect: Dialect) -> Any:
    """How this dialect stores a `UTCDateTime` (the column type's own conversion).

    On SQLite with its default storage format, one `isoformat` call writes the same text as the
    type's chain of processors, at a third of the cost per row of a bulk registration.
    """
    impl = orders_t.c.send_at.type.dialect_impl(dialect)
    if (
        isinstance(impl, sa.types.TypeDecorator)
        and getattr(impl.impl_instance, "_storage_format", None) == _SQLITE_DATETIME_FORMAT
    ):
        return _sqlite_stamp
    return impl.bind_processor(dialect) or (lambda v: v)


def _datetime_from_db(dialect: Dialect) -> Any:
    """How this dialect's raw `UTCDateTime` value becomes an aware datetime (the reverse of
    `_datetime_to_db`): on SQLite, one `fromisoformat` instead of the type's regular expression."""
    impl = orders_t.c.send_at.type.dialect_impl(dialect)
    if (
        isinstance(impl, sa.types.TypeDecorator)
        and getattr(impl.impl_instance, "_storage_format", None) == _SQLITE_DATETIME_FORMAT
    ):
        return _sqlite_time
    return impl.result_processor(dialect, None) or (lambda v: v)


def _sqlite_time(value: str) -> datetime:
    return datetime.fromisoformat(value).replace(tzinfo=UTC)


def _details_to_db(dialect: Dialect) -> Any:
    """How this dialect stores an event's details (the JSON column type's own conversion)."""
    own = events_t.c.details.type.dialect_impl(dialect).bind_processor(dialect)
    return own or (lambda value: value)


def _seconds_left_sql(dialect: Dialect, now: datetime) -> sa.ColumnElement[Any] | None:
    """``{"seconds_left": ...}`` for each order's send time, in SQL, equal to
    `seconds_left_detail` (whole milliseconds, half up; send times after `now`); None where
    this dialect has no such expression here."""
    send_at = orders_t.c.send_at
    if dialect.name == "postgresql":
        since = sa.cast(sa.extract("epoch", send_at - sa.literal(now, send_at.type)), sa.Numeric)
        return sa.func.json_build_object("seconds_left", sa.func.round(since, 3))
    if _datetime_to_db(dialect) is _sqlite_stamp:  # the stored text: YYYY-MM-DD HH:MM:SS.ffffff
        epoch = now - _EPOCH
        seconds, micros = epoch.days * 86_400 + epoch.seconds, epoch.microseconds
        # Whole microseconds since `now` from the text, then milliseconds rounded half up; the
        # two integers are ours, written into the statement. The seconds come from the text
        # without its fraction: SQLite's clock has milliseconds, so strftime('%s') of a time at
        # .9995 s says the next second.
        left: sa.ColumnElement[Any] = sa.literal_column(
            f"((CAST(strftime('%s', substr({send_at.name}, 1, 19)) AS INTEGER) - {seconds})"
            " * 1000000"
            f" + CAST(substr({send_at.name}, 21, 6) AS INTEGER) - {micros} + 500)"
            " / 1000 / 1000.0"
        )
        return sa.func.json_object("seconds_left", left)
    return None


#: `OrderState` by its value: a dict lookup, where calling the enum costs ten times more.
_STATES = {state.value: state for state in OrderState}


def _briefs(conn: Connection, stmt: sa.Select[Any]) -> list[Brief]:
    """The `Brief` rows `stmt` (order id, state, raw send time) selects."""
    to_time = _datetime_from_db(conn.dialect)
    return [Brief(oid, _STATES[state], to_time(at)) for oid, state, at in conn.execute(stmt)]


#: SQLite's default DATETIME storage format: what `_sqlite_stamp` writes.
_SQLITE_DATETIME_FORMAT: str = sqlite_dialect.DATETIME._storage_format


def _sqlite_stamp(value: datetime) -> str:
    """An aware datetime as SQLite's DATETIME stores a `UTCDateTime`: naive UTC, microseconds."""
    if value.tzinfo is None:
        raise ValueError("naive datetime reached the ledger; convert at the boundary")
    return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


class Store:
    """Runs every query of the ledger over one `Database` (`store.db`)."""

    def __init__(
        self,
        url: str | Database,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        must_exist: bool = False,
        engine: Engine | None = None,
    ) -> None:
        """Query the database at `url` (opened lazily, see `Database`), an open `Database`, or
        the application's `engine`."""
        self.db = (
            url
            if isinstance(url, Database)
            else Database(
                url,
                synchronous=synchronous,
                busy_timeout=busy_timeout,
                must_exist=must_exist,
                engine=engine,
            )
        )
        #: Which state changes write an alert in their own transaction (None: alerts are off).
        self.alerts: AlertPolicy | None = None
        #: Called after each committed state change with (to_state, how many orders): metrics.
        self.transition_observers: list[Callable[[OrderState, int], object]] = []

    # -- the database (thin delegations: callers and tests open transactions through the store) -

    @property
    def url(self) -> str:
        return self.db.url

    @property
    def dialect(self) -> str:
        return self.db.dialect

    @property
    def engine(self) -> Engine:
        return self.db.engine

    @property
    def database_file(self) -> Path | None:
        """The SQLite database file (absolute), None for an in-memory or server database."""
        return self.db.database_file

    def write(self) -> AbstractContextManager[Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        return self.db.write()

    def read(self) -> AbstractContextManager[Connection]:
        """A read-only transaction (a consistent snapshot)."""
        return self.db.read()

    def schema_lock(self) -> AbstractContextManager[Connection]:
        """A write transaction that no other process migrating this ledger runs beside."""
        return self.db.schema_lock()

    def lease_now(self) -> datetime:
        """The time claims are taken, renewed and compared by (see `Database.lease_now`)."""
        return self.db.lease_now()

    def dispose(self) -> None:
        self.db.dispose()

    # -- reads ---------------------------------------------------------------------------------

    def get(self, order_id: str, conn: Connection | None = None) -> Order | None:
        params = {"order_id": order_id}
        if conn is not None:
            row = conn.execute(_GET, params).mappings().first()
        else:
            with self.read() as c:
                row = c.execute(_GET, params).mappings().first()
        return _order(row) if row is not None else None

    def history(self, order_id: str) -> list[Event]:
        stmt = sa.select(events_t).where(events_t.c.order_id == order_id).order_by(events_t.c.id)
        with self.read() as conn:
            return [_event(r) for r in conn.execute(stmt).mappings()]

    def orders(
        self,
        *,
        states: Sequence[OrderState] | None = None,
        send_after: datetime | None = None,
        send_before: datetime | None = None,
        limit: int | None = None,
        label: str | None = None,
    ) -> list[Order]:
        """Orders by send time, filtered (send_after inclusive, send_before exclusive)."""
        stmt = sa.select(orders_t).order_by(orders_t.c.send_at, orders_t.c.order_id)
        if label is not None:
            stmt = stmt.where(orders_t.c.label == label)
        if states is not None:
            stmt = stmt.where(orders_t.c.state.in_([s.value for s in states]))
        if send_after is not None:
            stmt = stmt.where(orders_t.c.send_at >= send_after)
        if send_before is not None:
            stmt = stmt.where(orders_t.c.send_at < send_before)
        if limit is not None:
            stmt = stmt.limit(limit)
        with self.read() as conn:
            return [_order(r) for r in conn.execute(stmt).mappings()]

    def label_counts(
        self, *, now: datetime, edge: datetime, label: str | None = None
    ) -> list[tuple[str | None, OrderState, int, datetime | None, int]]:
        """Per (label, state): the count, the earliest send time after `now`, and how many are
        due by `edge`; one grouped query (every label, or only `label`)."""
        send_at = orders_t.c.send_at
        stmt = sa.select(
            orders_t.c.label,
            orders_t.c.state,
            sa.func.count(),
            sa.func.min(sa.case((send_at > now, send_at))),
            sa.func.sum(sa.case((send_at <= edge, 1), else_=0)),
        ).group_by(orders_t.c.label, orders_t.c.state)
        if label is not None:
            stmt = stmt.where(orders_t.c.label == label)
        with self.read() as conn:
            return [
                (row[0], OrderState(row[1]), int(row[2]), row[3], int(row[4] or 0))
                for row in conn.execute(stmt)
            ]

    def registered_between(self, start: datetime, end: datetime) -> list[Order]:
        """Orders the ledger registered in [start, end), by registration time."""
        stmt = (
            sa.select(orders_t)
            .where(orders_t.c.created_at >= start)
            .where(orders_t.c.created_at < end)
            .order_by(orders_t.c.created_at, orders_t.c.order_id)
        )
        with self.read() as conn:
            return [_order(r) for r in conn.execute(stmt).mappings()]

    def claimable(
        self, state: OrderState, now: datetime, *, limit: int, exclude: Sequence[str] = ()
    ) -> list[Order]:
        """Orders in `state` that nobody holds a live claim on, most urgent first."""
        stmt = (
            sa.select(orders_t)
            .where(orders_t.c.state == state.value)
            .where(sa.or_(orders_t.c.claim_owner.is_(None), orders_t.c.claim_expires_at <= now))
            .order_by(orders_t.c.send_at)
            .limit(limit)
        )
        if exclude:
            stmt = stmt.where(orders_t.c.order_id.not_in(list(exclude)))
        with self.read() as conn:
            return [_order(r) for r in conn.execute(stmt).mappings()]

    def claim_next(
        self,
        state: OrderState,
        *,
        owner: str,
        expires_at: datetime,
        now: datetime,
        limit: int = 1,
        exclude: Sequence[str] = (),
    ) -> list[Order]:
        """Pick and claim up to `limit` free orders in `state`, most urgent first, in one statement.

        Free means unclaimed or with an expired lease. PostgreSQL picks with ``FOR UPDATE SKIP
        LOCKED``, so daemons claiming at once each get different orders without waiting; SQLite's
        ``BEGIN IMMEDIATE`` runs one claim at a time, so the same statement needs no locking
        clause. The update repeats the guard, so a row is never taken from a live claim.
        """
        free = sa.or_(orders_t.c.claim_owner.is_(None), orders_t.c.claim_expires_at <= now)
        pick = (
            sa.select(orders_t.c.order_id)
            .where(orders_t.c.state == state.value)
            .where(free)
            .order_by(orders_t.c.send_at)
            .limit(limit)
        )
        if exclude:
            pick = pick.where(orders_t.c.order_id.not_in(list(exclude)))
        stmt = (
            orders_t.update()
            .where(orders_t.c.order_id.in_(self._locked(pick)))
            .values(claim_owner=owner, claim_expires_at=expires_at)
            .returning(*orders_t.c)
        )
        if self.dialect == "postgresql":
            stmt = stmt.where(orders_t.c.state == state.value).where(free)
        with self.write() as conn:
            claimed = [_order(r) for r in conn.execute(stmt).mappings()]
        return sorted(claimed, key=lambda o: (o.send_at, o.order_id))

    def live_claims(self, state: OrderState, now: datetime) -> list[Order]:
        """Orders in `state` under a claim that has not expired (work in flight somewhere)."""
        stmt = (
            sa.select(orders_t)
            .where(orders_t.c.state == state.value)
            .where(orders_t.c.claim_owner.is_not(None))
            .where(orders_t.c.claim_expires_at > now)
        )
        with self.read() as conn:
            return [_order(r) for r in conn.execute(stmt).mappings()]

    def _locked(self, candidates: sa.Select[tuple[str]]) -> sa.Select[tuple[str]]:
        """The ids `candidates` picks (ordered, limited), as the set an UPDATE may take.

        PostgreSQL: locked ``FOR UPDATE SKIP LOCKED`` in a ``MATERIALIZED`` CTE, evaluated once.
        Written as ``IN (SELECT ... LIMIT n FOR UPDATE SKIP LOCKED)`` the planner may run the
        subquery again for every outer row (a nested-loop semi join), each run skipping the rows
        the previous ones locked, and the update takes every candidate instead of `n`.
        """
        if self.dialect != "postgresql":
            return candidates
        picked = (
            candidates.with_for_update(skip_locked=True).cte("picked").prefix_with("MATERIALIZED")
        )
        return sa.select(picked.c.order_id)

    def unwarned(self, states: Sequence[OrderState], before: datetime) -> list[Order]:
        """Orders in `states` due before `before` that have not been warned about yet."""
        stmt = (
            sa.select(orders_t)
            .where(orders_t.c.state.in_([s.value for s in states]))
            .where(orders_t.c.send_at <= before)
            .where(orders_t.c.warned_at.is_(None))
            .order_by(orders_t.c.send_at)
        )
        with self.read() as conn:
            return [_order(r) for r in conn.execute(stmt).mappings()]

    def existing_send_times(
        self, conn: Connection, order_ids: Sequence[str]
    ) -> dict[str, datetime]:
        found: dict[str, datetime] = {}
        for start in range(0, len(order_ids), _IN_CHUNK):
            chunk = order_ids[start : start + _IN_CHUNK]
            found.update(
                {r.order_id: r.send_at for r in conn.execute(_SEND_TIMES_OF, {"ids": chunk})}
            )
        return found

    def orders_by_id(self, order_ids: Sequence[str]) -> dict[str, Order]:
        """The orders of these ids that exist, by id (a few IN lookups, not one per id)."""
        found: dict[str, Order] = {}
        with self.read() as conn:
            for start in range(0, len(order_ids), _IN_CHUNK):
                chunk = list(order_ids[start : start + _IN_CHUNK])
                stmt = sa.select(orders_t).where(orders_t.c.order_id.in_(chunk))
                found.update({r["order_id"]: _order(r) for r in conn.execute(stmt).mappings()})
        return found

    # -- writes --------------------------------------------------------------------------------

    def insert_new(
        self,
        conn: Connection,
        rows: Sequence[tuple[str, datetime, str | None]],
        now: datetime,
        reason: str,
    ) -> None:
        """Insert brand-new orders in `scheduled` with their registration events (bulk).

        Raises `ConcurrentRegistration` when another transaction inserted one of the ids first
        (PostgreSQL; SQLite's write lock rules that out); the transaction is then spoilt and must
        be rolled back.
        """
        if not rows:
            return
        state = OrderState.SCHEDULED.value
        try:
            self._insert_orders(conn, rows, now, reason)
        except sa.exc.IntegrityError as exc:
            if not _is_duplicate_key(exc):
                raise
            raise ConcurrentRegistration(
                f"another process registered some of these {len(rows)} orders at the same time"
            ) from exc
        dialect = conn.dialect
        now_db = _datetime_to_db(dialect)(now)
        conn.exec_driver_sql(
            *_driver_rows(
                events_t,
                _NEW_EVENT_KEYS,
                dialect,
                [(oid, now_db, state, reason) for oid, _send_at, _label in rows],
            )
        )

    def log_registered(self, order_ids: Iterable[str], reason: str) -> None:
        """Log the registration of orders `insert_new` wrote, once their transaction committed."""
        for order_id in order_ids:
            self._log_change(order_id, None, OrderState.SCHEDULED, reason, None)

    @staticmethod
    def _insert_orders(
        conn: Connection,
        rows: Sequence[tuple[str, datetime, str | None]],
        now: datetime,
        reason: str,
    ) -> None:
        """One DBAPI executemany, each datetime converted once by its column type."""
        dialect = conn.dialect
        to_db = _datetime_to_db(dialect)
        now_db = to_db(now)
        state = OrderState.SCHEDULED.value
        conn.exec_driver_sql(
            *_driver_rows(
                orders_t,
                _NEW_ORDER_KEYS,
                dialect,
                [
                    (oid, to_db(send_at), state, label, reason, 0, 0, now_db, now_db)
                    for oid, send_at, label in rows
                ],
            )
        )

    def transition(
        self,
        order_id: str,
        from_state: OrderState,
        to_state: OrderState,
        *,
        now: datetime,
        reason: str,
        details: Mapping[str, Any] | None = None,
        values: Mapping[str, Any] | None = None,
        increment: Sequence[str] = (),
        expect_owner: str | None = None,
        unexpired_at: datetime | None = None,
        by_person: bool = False,
    ) -> TransitionResult:
        """Apply one legal state change as a guarded update plus its event, in one transaction.

        The update only matches while the order is still in `from_state` (and, with
        `expect_owner`, still claimed by that owner; with `unexpired_at` too, a lease time, only
        while that claim has not expired then: a fenced write); when it does not match nothing is
        written and the result says so. Leaving for a final state releases any claim.
        `by_person`: a person asked for it (`Ledger.resolve`), which `BY_PERSON_ONLY` needs.
        """
        if not is_legal(from_state, to_state, by_person=by_person):
            raise IllegalTransition(
                f"order {order_id}: {from_state.value} -> {to_state.value} is not legal"
                + (
                    " (only a person may take it)"
                    if is_legal(from_state, to_state, by_person=True)
                    else ""
                )
            )
        if unexpired_at is not None and expect_owner is None:
            raise ValueError("unexpired_at fences a claim: it needs expect_owner")
        changes: dict[str, Any] = {"state": to_state.value, "reason": reason, "updated_at": now}
        if to_state is not OrderState.CANCELLING:
            changes["claim_owner"] = None
            changes["claim_expires_at"] = None
        changes.update(values or {})
        stmt = _transition_update(
            tuple(changes), tuple(increment), expect_owner is not None, unexpired_at is not None
        )
        params = {_SET + key: value for key, value in changes.items()}
        params.update(
            _order_id=order_id,
            _from_state=from_state.value,
            _owner=expect_owner,
            _unexpired_at=unexpired_at,
        )
        event = {
            "order_id": order_id,
            "at": now,
            "from_state": from_state.value,
            "to_state": to_state.value,
            "reason": reason,
            "details": dict(details) if details else None,
        }
        with self.write() as conn:
            row = conn.execute(stmt, params).mappings().first()
            if row is None:
                return TransitionResult(applied=False, order=self.get(order_id, conn))
            conn.execute(_EVENT_INSERT, event)
            order = _order(row)
            if self.alerts is not None:
                self.alerts.on_transition(conn, [order], to_state, reason, now)
        self._log_change(order_id, from_state, to_state, reason, details)
        self._observe_transitions(to_state, 1)
        return TransitionResult(applied=True, order=order)

    def transition_batch(
        self,
        decide: Callable[[list[Brief]], Sequence[Change]],
        *,
        order_ids: Sequence[str] | None = None,
        label_page: tuple[str, str] | None = None,
        limit: int,
        now: datetime,
        values: Mapping[str, Any] | None = None,
        dry_run: bool = False,
        bulk: BulkChange | None = None,
    ) -> list[Brief]:
        """Read a batch of orders, let `decide` say what changes, apply it: one transaction.

        The batch is `order_ids` (at most `limit`), or the first `limit` orders with a label after
        an order id (`label_page` = (label, after), by order id: a keyset page the label index
        serves). The rows are locked while `decide` runs (SQLite's write lock; ``FOR UPDATE`` on
        PostgreSQL), so no other process moves them between the decision and the guarded updates;
        each change is still guarded (``WHERE state = :from``) and writes its history row in the
        same transaction. `values` are set on every changed row. With `dry_run` the batch is only
        read and `decide`'s changes are not applied. Returns the orders as read.

        `bulk` (label pages only): the orders it `covers` are changed set-based (see
        `BulkChange`) unless this dialect or an alert on its target state needs them one by
        one; `decide` must leave them out. `BulkMismatch` when the set-based write took another
        number of orders than the batch read (nothing written; decide again without `bulk`).

        Built for campaigns of 100,000 orders (bench/bulk_cancel.py): the batch is read as
        `Brief` rows, each group of like changes is one UPDATE over an id list, the history rows
        one driver-level executemany, and the log gets one line per group of like changes
        (`_log_batch`) instead of one per order.
        """
        if (order_ids is None) == (label_page is None):
            raise ValueError("transition_batch needs either order_ids or label_page")
        if bulk is not None and label_page is None:
            raise ValueError("a bulk change is for label pages")
        columns = (
            orders_t.c.order_id,
            orders_t.c.state,
            sa.type_coerce(orders_t.c.send_at, sa.types.NullType()).label("send_at"),
        )
        base = sa.select(*columns).order_by(orders_t.c.order_id)
        if self.dialect == "postgresql" and not dry_run:
            base = base.with_for_update()
        if order_ids is not None:
            if len(order_ids) > limit:
                raise ValueError(f"{len(order_ids)} ids in one batch; at most {limit}")
            ids = sorted(order_ids)
            pages = [
                base.where(orders_t.c.order_id.in_(ids[start : start + _IN_CHUNK]))
                for start in range(0, len(ids), _IN_CHUNK)
            ]
        else:
            assert label_page is not None
            label, after = label_page
            pages = [
                base.where(orders_t.c.label == label)
                .where(orders_t.c.order_id > after)
                .limit(limit)
            ]
        if dry_run:
            with self.read() as conn:
                briefs = [b for page in pages for b in _briefs(conn, page)]
            decide(briefs)
            return briefs
        with self.write() as conn:
            briefs = [b for page in pages for b in _briefs(conn, page)]
            changes = list(decide(briefs))
            bulked: list[str] = []
            if bulk is not None and briefs:
                assert label_page is not None
                covered = [b for b in briefs if bulk.covers(b)]
                if {c.order_id for c in changes}.intersection(b.order_id for b in covered):
                    raise ValueError("decide changed an order the bulk change covers")
                page_of = (label_page[0], label_page[1], briefs[-1].order_id)
                if self._apply_bulk(
                    conn, bulk, page_of, expected=len(covered), now=now, values=values or {}
                ):
                    bulked = [b.order_id for b in covered]
                else:  # one by one after all, with the same values
                    changes += [
                        Change(
                            b.order_id,
                            bulk.from_state,
                            bulk.to_state,
                            bulk.reason,
                            {"seconds_left": seconds_left_detail(b.send_at, now)},
                        )
                        for b in covered
                    ]
            self._apply_changes(conn, changes, now, values or {})
        self._log_batch(changes, bulk, bulked)
        return briefs

    def _apply_bulk(
        self,
        conn: Connection,
        bulk: BulkChange,
        page: tuple[str, str, str],
        *,
        expected: int,
        now: datetime,
        values: Mapping[str, Any],
    ) -> bool:
        """Write `bulk` over one label page (label, after id, last id) set-based, in `conn`:
        the history rows by ``INSERT ... SELECT``, then the guarded UPDATE, each checked to take
        `expected` orders. False (nothing written) where the orders must go one by one: an
        alert on the target state, or a dialect without the details expression."""
        if not is_legal(bulk.from_state, bulk.to_state):
            raise IllegalTransition(
                f"{bulk.from_state.value} -> {bulk.to_state.value} is not legal"
            )
        if self.alerts is not None and bulk.to_state.value in self.alerts.events:
            return False
        details = _seconds_left_sql(conn.dialect, now)
        if details is None:
            return False
        label, after, last = page
        taken = sa.and_(
            orders_t.c.label == label,
            orders_t.c.order_id > after,
            orders_t.c.order_id <= last,
            orders_t.c.state == bulk.from_state.value,
            orders_t.c.send_at > bulk.send_after,
        )
        rows = sa.select(
            orders_t.c.order_id,
            sa.literal(now, events_t.c.at.type),
            sa.literal(bulk.from_state.value),
            sa.literal(bulk.to_state.value),
            sa.literal(bulk.reason),
            details,
        ).where(taken)
        keys = ["order_id", "at", "from_state", "to_state", "reason", "details"]
        insert = events_t.insert().from_select(keys, rows)
        if conn.dialect.name == "postgresql":  # SQLAlchemy reports no rowcount for it there
            inserted = len(conn.execute(insert.returning(events_t.c.id)).all())
        else:
            inserted = conn.execute(insert).rowcount
        fields: dict[str, Any] = {
            "state": bulk.to_state.value,
            "reason": bulk.reason,
            "updated_at": now,
        }
        if bulk.to_state is not OrderState.CANCELLING:
            fields["claim_owner"] = None
            fields["claim_expires_at"] = None
        fields.update(values)
        updated = conn.execute(orders_t.update().where(taken).values(**fields)).rowcount
        if inserted != expected or updated != expected:
            raise BulkMismatch(
                f"a set-based change took {inserted} and {updated} orders of a batch that read "
                f"{expected}; nothing of the batch was written"
            )
        return True

    def _apply_changes(
        self,
        conn: Connection,
        changes: Sequence[Change],
        now: datetime,
        values: Mapping[str, Any],
    ) -> None:
        """Guarded updates (one per from/to/reason group, over its ids), their events and their
        alerts, in `conn`."""
        groups: dict[tuple[OrderState, OrderState, str], list[str]] = {}
        for change in changes:
            key = (change.from_state, change.to_state, change.reason)
            ids = groups.get(key)
            if ids is None:
                if not is_legal(change.from_state, change.to_state):
                    raise IllegalTransition(
                        f"order {change.order_id}: {change.from_state.value} -> "
                        f"{change.to_state.value} is not legal"
                    )
                ids = groups[key] = []
            ids.append(change.order_id)
        state: sa.ColumnElement[str] = orders_t.c.state
        if conn.dialect.name == "sqlite":
            # Given "order_id IN (...) AND state = ?", SQLite's planner takes the (state, send_at)
            # index over the primary key and scans every order in that state for each update: a
            # campaign's cancel grew with the square of its size. Unary plus keeps the state
            # term out of index selection (the documented way), so the ids are looked up.
            state = sa.literal_column("+state", orders_t.c.state.type)
        for (from_state, to_state, reason), ids in groups.items():
            fields: dict[str, Any] = {"state": to_state.value, "reason": reason, "updated_at": now}
            if to_state is not OrderState.CANCELLING:
                fields["claim_owner"] = None
                fields["claim_expires_at"] = None
            fields.update(values)
            stmt = (
                orders_t.update()
                .where(orders_t.c.order_id.in_(sa.bindparam("ids", expanding=True)))
                .where(state == from_state.value)
                .values(**fields)
            )
            done = 0
            for start in range(0, len(ids), _IN_CHUNK):
                done += conn.execute(stmt, {"ids": ids[start : start + _IN_CHUNK]}).rowcount
            if done != len(ids):  # the rows are locked: only a bug gets here
                raise LedgerError(
                    f"{len(ids) - done} of {len(ids)} orders left {from_state.value} during "
                    "a batch that held their rows; nothing was written"
                )
        if not changes:
            return
        dialect = conn.dialect
        now_db = _datetime_to_db(dialect)(now)
        details_db = _details_to_db(dialect)
        conn.exec_driver_sql(
            *_driver_rows(
                events_t,
                _EVENT_KEYS,
                dialect,
                [
                    (
                        c.order_id,
                        now_db,
                        c.from_state.value,
                        c.to_state.value,
                        c.reason,
                        details_db(dict(c.details)) if c.details else None,
                    )
                    for c in changes
                ],
            )
        )
        if self.alerts is not None:
            self._alert_changes(conn, changes, now)

    def _alert_changes(self, conn: Connection, changes: Sequence[Change], now: datetime) -> None:
        """The alerts of a batch's changes, written in its transaction as `transition` does."""
        assert self.alerts is not None
        alerting = [c for c in changes if c.to_state.value in self.alerts.events]
        ids = [c.order_id for c in alerting]
        after: dict[str, Order] = {}
        for start in range(0, len(ids), _IN_CHUNK):
            stmt = sa.select(orders_t).where(
                orders_t.c.order_id.in_(ids[start : start + _IN_CHUNK])
            )
            after.update({r["order_id"]: _order(r) for r in conn.execute(stmt).mappings()})
        grouped: dict[tuple[OrderState, str], list[Order]] = {}
        for change in alerting:
            grouped.setdefault((change.to_state, change.reason), []).append(after[change.order_id])
        for (to_state, reason), orders in grouped.items():
            self.alerts.on_transition(conn, orders, to_state, reason, now)

    def _log_batch(
        self, changes: Sequence[Change], bulk: BulkChange | None = None, bulked: Sequence[str] = ()
    ) -> None:
        """Log a committed batch: every loud change (`_LOUD`: a person must look at it) on its
        own line as `transition` logs it; the rest as one ``orders_state_changed`` line per
        from/to/reason group (count, first and last order id). Every change keeps its history
        row, and ``smsledger logs --order`` shows it from the ledger where the log has no line.
        """
        quiet: dict[tuple[OrderState, OrderState, str], list[str]] = {}
        if bulk is not None and bulked:
            quiet[(bulk.from_state, bulk.to_state, bulk.reason)] = list(bulked)
        for change in changes:
            if change.to_state in _LOUD:
                self._log_change(
                    change.order_id,
                    change.from_state,
                    change.to_state,
                    change.reason,
                    change.details,
                )
            else:
                key = (change.from_state, change.to_state, change.reason)
                quiet.setdefault(key, []).append(change.order_id)
        for (from_state, to_state, reason), ids in quiet.items():
            log.info(
                "orders_state_changed",
                count=len(ids),
                from_state=from_state.value,
                to_state=to_state.value,
                reason=reason,
                first_order_id=ids[0],
                last_order_id=ids[-1],
            )

    def transition_due(
        self,
        from_state: OrderState,
        to_state: OrderState,
        *,
        due_by: datetime,
        now: datetime,
        reason: str,
        limit: int = 1000,
    ) -> list[Order]:
        """Move up to `limit` orders in `from_state` with ``send_at <= due_by`` to `to_state`.

        One transaction for the batch: a 200,000-recipient campaign passing its send time at once
        costs a few hundred statements, not a transaction per order.
        """
        if not is_legal(from_state, to_state):
            raise IllegalTransition(f"{from_state.value} -> {to_state.value} is not legal")
        due = (
            sa.select(orders_t.c.order_id)
            .where(orders_t.c.state == from_state.value)
            .where(orders_t.c.send_at <= due_by)
            .order_by(orders_t.c.send_at)
            .limit(limit)
        )
        stmt = (
            orders_t.update()
            .where(orders_t.c.order_id.in_(self._locked(due)))
            .values(
                state=to_state.value,
                reason=reason,
                updated_at=now,
                claim_owner=None,
                claim_expires_at=None,
            )
            .returning(*orders_t.c)
        )
        if self.dialect == "postgresql":
            # SQLite runs the statement under its write lock, so the subquery's guard holds; there
            # a repeated `state = ?` would drive the update through every row in `from_state`.
            stmt = stmt.where(orders_t.c.state == from_state.value)
        with self.write() as conn:
            orders = [_order(r) for r in conn.execute(stmt).mappings()]
            if orders:
                conn.execute(
                    events_t.insert(),
                    [
                        {
                            "order_id": o.order_id,
                            "at": now,
                            "from_state": from_state.value,
                            "to_state": to_state.value,
                            "reason": reason,
                            "details": None,
                        }
                        for o in orders
                    ],
                )
                if self.alerts is not None:
                    self.alerts.on_transition(conn, orders, to_state, reason, now)
        for o in orders:
            self._log_change(o.order_id, from_state, to_state, reason, None)
        if orders:
            self._observe_transitions(to_state, len(orders))
        return orders

    def claim(
        self,
        order_id: str,
        state: OrderState,
        *,
        owner: str,
        expires_at: datetime,
        now: datetime,
        steal_from: str | None = None,
    ) -> Order | None:
        """Take (or renew) the claim on an order in `state` if it is free, expired or ours.

        `steal_from` also takes it from that owner, for a claimant known to be dead (a process of
        this host that is gone). Not a state change, so no event; returns the claimed order or
        None when someone else holds a live claim or the state moved on.
        """
        holders = [
            orders_t.c.claim_owner.is_(None),
            orders_t.c.claim_owner == owner,
            orders_t.c.claim_expires_at <= now,
        ]
        if steal_from is not None:
            holders.append(orders_t.c.claim_owner == steal_from)
        stmt = (
            orders_t.update()
            .where(orders_t.c.order_id == order_id)
            .where(orders_t.c.state == state.value)
            .where(sa.or_(*holders))
            .values(claim_owner=owner, claim_expires_at=expires_at)
            .returning(*orders_t.c)
        )
        with self.write() as conn:
            row = conn.execute(stmt).mappings().first()
        return _order(row) if row is not None else None

    def renew(
        self, order_id: str, state: OrderState, *, owner: str, expires_at: datetime, now: datetime
    ) -> Order | None:
        """Extend our own claim on an order in `state` while it is still live at lease time `now`.

        Unlike `claim`, an expired claim is never renewed, even when nobody took it yet: from its
        expiry another daemon may be taking the order, so the holder must stop and leave it to
        recovery. Returns the order, or None when the claim is lost or the state moved on.
        """
        stmt = (
            orders_t.update()
            .where(orders_t.c.order_id == order_id)
            .where(orders_t.c.state == state.value)
            .where(orders_t.c.claim_owner == owner)
            .where(orders_t.c.claim_expires_at > now)
            .values(claim_expires_at=expires_at)
            .returning(*orders_t.c)
        )
        with self.write() as conn:
            row = conn.execute(stmt).mappings().first()
        return _order(row) if row is not None else None

    def release(self, order_id: str, owner: str) -> None:
        """Give up our claim without changing the state (the work is left for a later pass)."""
        stmt = (
            orders_t.update()
            .where(orders_t.c.order_id == order_id)
            .where(orders_t.c.claim_owner == owner)
            .values(claim_owner=None, claim_expires_at=None)
        )
        with self.write() as conn:
            conn.execute(stmt)

    def record_delivery(
        self,
        order_id: str,
        state: OrderState,
        *,
        values: Mapping[str, Any],
        now: datetime,
    ) -> Order | None:
        """Record what the provider reported (delivery counters, its code) on an order still in
        `state`, without a state change and so without a history row; None when the state moved.

        Only `DELIVERY_COLUMNS`, ``delivery_checked_at`` and ``last_provider_code`` may be set.
        """
        allowed = {*DELIVERY_COLUMNS, "delivery_checked_at", "last_provider_code"}
        unknown = set(values) - allowed
        if unknown:
            raise ValueError(f"record_delivery cannot set {', '.join(sorted(unknown))}")
        stmt = (
            orders_t.update()
            .where(orders_t.c.order_id == order_id)
            .where(orders_t.c.state == state.value)
            .values(**values, updated_at=now)
            .returning(*orders_t.c)
        )
        with self.write() as conn:
            row = conn.execute(stmt).mappings().first()
        return _order(row) if row is not None else None

    def mark_warned(self, order_id: str, now: datetime) -> bool:
        """Record that the at-risk warning was given; True only for the first caller."""
        stmt = (
            orders_t.update()
            .where(orders_t.c.order_id == order_id)
            .where(orders_t.c.warned_at.is_(None))
            .values(warned_at=now)
        )
        with self.write() as conn:
            return conn.execute(stmt).rowcount == 1

    def _observe_transitions(self, to_state: OrderState, count: int) -> None:
        for observer in self.transition_observers:
            try:
                observer(to_state, count)
            except Exception:  # an observer's bug must not turn a committed change into an error
                log.exception("transition_observer_failed")

    @staticmethod
    def _log_change(
        order_id: str,
        from_state: OrderState | None,
        to_state: OrderState,
        reason: str,
        details: Mapping[str, Any] | None,
    ) -> None:
        # Outcomes a person must look at are loud: `logs --level warning` finds every one.
        level = _LOUD.get(to_state, "info")
        getattr(log, level)(
            "order_state_changed",
            order_id=order_id,
            from_state=from_state.value if from_state else None,
            to_state=to_state.value,
            reason=reason,
            **({"details": dict(details)} if details else {}),
        )
