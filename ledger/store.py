"""Every query the ledger runs; the one module that opens database connections.

SQLite write transactions start with ``BEGIN IMMEDIATE``: a deferred transaction that reads and then
writes can fail in WAL mode with SQLITE_BUSY no busy timeout can cure, while an immediate one waits
its turn for the write lock. Read transactions stay deferred so readers never wait for writers.

Claims are timed by one clock, `Store.lease_now`: the database server's on PostgreSQL (daemons
on several hosts share the ledger, not their clocks), the host's on SQLite (every process that
opens the file runs on that host). Business time (send times, history) stays on the callers'.

PostgreSQL runs the same statements at READ COMMITTED: every guarded update re-reads the row it
waited for, so its ``WHERE state = :expected`` still decides; claims of several rows at once use
``FOR UPDATE SKIP LOCKED`` so that daemons split the work instead of queueing behind each other.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Dialect, Engine, RowMapping

from ledger._clock import utcnow
from ledger._log import get_logger
from ledger._urls import UNPARSABLE, display_url
from ledger.errors import IllegalTransition, LedgerError, LedgerUnavailable, NoLedger
from ledger.models import Event, EventRow, Order, OrderRow
from ledger.states import OrderState, is_legal

__all__ = ["ConcurrentRegistration", "Store", "TransitionResult", "display_url"]

log = get_logger("smsledger.ledger")

orders_t: sa.Table = OrderRow.__table__  # type: ignore[attr-defined]
events_t: sa.Table = EventRow.__table__  # type: ignore[attr-defined]
_ORDER_COLUMNS = [c.name for c in orders_t.columns]
_WRITE = "smsledger_write"
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


#: Key of the PostgreSQL advisory lock that serialises schema migrations of one ledger (one schema).
_SCHEMA_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtextextended('smsledger.schema:' || current_schema(), 0))"
)


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
    """How this dialect stores a `UTCDateTime` (the column type's own conversion)."""
    return orders_t.c.send_at.type.dialect_impl(dialect).bind_processor(dialect) or (lambda v: v)


def _enable_wal(cursor: Any, busy_timeout: float) -> None:
    """Switch a SQLite database to WAL, waiting for other processes doing the same.

    Turning a new file to WAL needs its exclusive lock, and SQLite answers "database is locked"
    at once instead of calling the busy handler when several processes open it together.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
        else:
            return


def _begin_sqlite(conn: Connection) -> None:
    """Start a SQLite transaction: ``BEGIN IMMEDIATE`` for writes (see the module docstring)."""
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")


def _is_unusable(exc: BaseException) -> bool:
    """Whether a database error means the database cannot be used at all (unreachable, locked,
    damaged, not a database) rather than that a statement was wrong (a constraint, a bug).

    SQLite reports a file that is no database, or a damaged one, as a bare ``DatabaseError``.
    """
    return isinstance(exc, sa.exc.OperationalError) or type(exc) is sa.exc.DatabaseError


def _existing_sqlite_file(parsed: sa.URL) -> sa.URL:
    """`parsed` as a URI that opens the file read-write without creating it; `NoLedger` if the
    file is not there. In-memory and URI databases are returned as they are."""
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return parsed
    path = Path(database).absolute()
    try:
        why = "the file is empty" if path.stat().st_size == 0 else None
    except FileNotFoundError:
        why = "no such file"
    except OSError as exc:
        why = exc.strerror or str(exc)
    if why is not None:  # opening an empty file would write a database header into it
        raise NoLedger(
            f"no ledger exists at {path} ({why}); check ledger.url, or create one with "
            "'smsledger migrate'"
        )
    return parsed.set(
        database=f"file:{quote(str(path))}",
        query={**parsed.query, "mode": "rw", "uri": "true"},
    )


class Store:
    """Owns the engine and runs every query of the ledger."""

    def __init__(
        self,
        url: str,
        *,
        synchronous: str = "FULL",
        busy_timeout: float = 30.0,
        must_exist: bool = False,
        engine: Engine | None = None,
    ) -> None:
        """Open (lazily) the database at `url`, or use the application's `engine`.

        `must_exist`: a SQLite file that is not there raises `NoLedger` instead of being created,
        and is opened read-write without create, so one removed later is not made again either.
        """
        self._owns_engine = engine is None
        if engine is not None:
            self._use_engine(engine)
            return
        self.url = url
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError:
            shown = display_url(url)
            raise LedgerUnavailable(
                f"ledger URL {'' if shown == UNPARSABLE else shown + ' '}is not a database URL "
                "(sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)"
            ) from None
        self.dialect = parsed.get_backend_name()
        if must_exist and self.dialect == "sqlite":
            parsed = _existing_sqlite_file(parsed)
        kwargs: dict[str, Any] = {}
        if self.dialect == "sqlite":
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": busy_timeout}
        else:
            # A daemon outlives server restarts and idle-connection reapers.
            kwargs["pool_pre_ping"] = True
        try:
            self.engine: Engine = sa.create_engine(parsed, **kwargs)
        except (ImportError, sa.exc.NoSuchModuleError) as exc:
            hint = ""
            if self.dialect == "postgresql":
                hint = (
                    "; PostgreSQL ledgers need psycopg 3: pip install 'smsledger[postgres]' and "
                    "use a postgresql+psycopg:// URL"
                )
            raise LedgerUnavailable(f"cannot use ledger {display_url(url)}: {exc}{hint}") from None
        except sa.exc.ArgumentError as exc:
            raise LedgerUnavailable(f"cannot use ledger {display_url(url)}: {exc}") from None
        # SQLite has one writer: this process's threads queue here in order instead of polling
        # for the file lock in SQLite's busy handler, which sleeps up to 100 ms between tries.
        self._write_lock: Any = (
            threading.RLock() if self.dialect == "sqlite" else contextlib.nullcontext()
        )
        if self.dialect == "sqlite":
            self._setup_sqlite(synchronous.upper(), busy_timeout)

    def _use_engine(self, engine: Engine) -> None:
        """Run on an application's engine, leaving its own connections as they are.

        The ledger works on a copy that shares the engine's pool (`Engine.execution_options`):
        listeners added to the copy apply to the ledger's transactions only. On SQLite the
        ledger's write transactions still start with ``BEGIN IMMEDIATE``; the connection
        settings (WAL, busy timeout, synchronous) stay the application's, as the README says.
        """
        self.url = engine.url.render_as_string(hide_password=True)
        self.dialect = engine.dialect.name
        self.engine = engine.execution_options()
        self._write_lock = (
            threading.RLock() if self.dialect == "sqlite" else contextlib.nullcontext()
        )
        if self.dialect == "sqlite":
            sa_event.listen(self.engine, "begin", _begin_sqlite)

    def _setup_sqlite(self, synchronous: str, busy_timeout: float) -> None:
        @sa_event.listens_for(self.engine, "connect")
        def _connect(dbapi_connection: Any, _record: Any) -> None:
            # Let SQLAlchemy's "begin" event below decide how transactions start.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            _enable_wal(cursor, busy_timeout)
            cursor.execute(f"PRAGMA synchronous = {synchronous}")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.close()

        sa_event.listen(self.engine, "begin", _begin_sqlite)

    # -- connections ---------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: committed on success, rolled back on any exception."""
        with self._write_lock, self._transaction(write=True) as conn:
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (a consistent snapshot)."""
        with self._transaction(write=False) as conn:
            yield conn

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        try:
            conn = self.engine.connect()
        except (sa.exc.DatabaseError, sa.exc.TimeoutError) as exc:
            raise self._unavailable(exc) from None
        try:
            if write:
                conn.execution_options(**{_WRITE: True})
            with conn.begin():
                yield conn
        except sa.exc.DatabaseError as exc:
            if not _is_unusable(exc):
                raise
            raise self._unavailable(exc) from exc
        finally:
            conn.close()

    @contextmanager
    def schema_lock(self) -> Iterator[Connection]:
        """A write transaction that no other process migrating this ledger runs beside.

        SQLite: ``BEGIN IMMEDIATE`` holds the database's write lock. PostgreSQL: a transaction
        advisory lock keyed by the current schema, released at commit or rollback. DDL is
        transactional on both, so a migration interrupted half-way leaves nothing behind.
        """
        with self.write() as conn:
            if self.dialect == "postgresql":
                conn.exec_driver_sql(_SCHEMA_LOCK)
            yield conn

    def _unavailable(self, exc: sa.exc.SQLAlchemyError) -> LedgerUnavailable:
        orig = getattr(exc, "orig", None)
        detail = " ".join((str(orig) if orig is not None else str(exc)).split())
        if _is_unusable(exc) and not isinstance(exc, sa.exc.OperationalError):
            return LedgerUnavailable(
                f"ledger {display_url(self.url)} is damaged or not a database ({detail}); "
                "restore it from a backup, or point ledger.url at the right file"
            )
        return LedgerUnavailable(f"ledger {display_url(self.url)} is unavailable: {detail}")

    def dispose(self) -> None:
        """Close the ledger's connections; an application's engine is left to the application."""
        if self._owns_engine:
            self.engine.dispose()

    @property
    def database_file(self) -> Path | None:
        """The SQLite database file (absolute), None for an in-memory or server database."""
        if self.dialect != "sqlite":
            return None
        database = self.engine.url.database
        if not database or database == ":memory:" or database.startswith("file:"):
            return None
        return Path(database).absolute()

    def lease_now(self) -> datetime:
        """The time claims are taken, renewed and compared by (aware UTC).

        PostgreSQL: the server's ``clock_timestamp()``, one clock for daemons on several hosts.
        SQLite: the host's clock, which every process using the file shares.
        """
        if self.dialect != "postgresql":
            return utcnow()
        with self.read() as conn:
            value: datetime = conn.exec_driver_sql("SELECT clock_timestamp()").scalar_one()
        return value.astimezone(UTC)

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
    ) -> list[Order]:
        """Orders by send time, filtered (send_after inclusive, send_before exclusive)."""
        stmt = sa.select(orders_t).order_by(orders_t.c.send_at, orders_t.c.order_id)
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
    ) -> TransitionResult:
        """Apply one legal state change as a guarded update plus its event, in one transaction.

        The update only matches while the order is still in `from_state` (and, with
        `expect_owner`, still claimed by that owner; with `unexpired_at` too, a lease time, only
        while that claim has not expired then: a fenced write); when it does not match nothing is
        written and the result says so. Leaving for a final state releases any claim.
        """
        if not is_legal(from_state, to_state):
            raise IllegalTransition(
                f"order {order_id}: {from_state.value} -> {to_state.value} is not legal"
            )
        changes: dict[str, Any] = {"state": to_state.value, "reason": reason, "updated_at": now}
        if to_state is not OrderState.CANCELLING:
            changes["claim_owner"] = None
            changes["claim_expires_at"] = None
        changes.update(values or {})
        for column in increment:
            changes[column] = orders_t.c[column] + 1
        stmt = (
            orders_t.update()
            .where(orders_t.c.order_id == order_id)
            .where(orders_t.c.state == from_state.value)
            .values(**changes)
            .returning(*orders_t.c)
        )
        if expect_owner is not None:
            stmt = stmt.where(orders_t.c.claim_owner == expect_owner)
        if unexpired_at is not None:
            if expect_owner is None:
                raise ValueError("unexpired_at fences a claim: it needs expect_owner")
            stmt = stmt.where(orders_t.c.claim_expires_at > unexpired_at)
        with self.write() as conn:
            row = conn.execute(stmt).mappings().first()
            if row is None:
                return TransitionResult(applied=False, order=self.get(order_id, conn))
            conn.execute(
                events_t.insert().values(
                    order_id=order_id,
                    at=now,
                    from_state=from_state.value,
                    to_state=to_state.value,
                    reason=reason,
                    details=dict(details) if details else None,
                )
            )
            order = _order(row)
        self._log_change(order_id, from_state, to_state, reason, details)
        return TransitionResult(applied=True, order=order)

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
        for o in orders:
            self._log_change(o.order_id, from_state, to_state, reason, None)
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

    @staticmethod
    def _log_change(
        order_id: str,
        from_state: OrderState | None,
        to_state: OrderState,
        reason: str,
        details: Mapping[str, Any] | None,
    ) -> None:
        log.info(
            "order_state_changed",
            order_id=order_id,
            from_state=from_state.value if from_state else None,
            to_state=to_state.value,
            reason=reason,
            **({"details": dict(details)} if details else {}),
        )
