"""`Database`: the one place that opens connections to the ledger's database.

SQLite write transactions start with ``BEGIN IMMEDIATE``: a deferred transaction that reads and then
writes can fail in WAL mode with SQLITE_BUSY no busy timeout can cure, while an immediate one waits
its turn for the write lock. Read transactions stay deferred so readers never wait for writers.

Claims are timed by one clock, `Database.lease_now`: the database server's on PostgreSQL (daemons
on several hosts share the ledger, not their clocks), the host's on SQLite (every process that
opens the file runs on that host). Business time (send times, history) stays on the callers'.

Errors that mean the database cannot be used at all (unreachable, locked, damaged, not a database)
become `LedgerUnavailable` here, with the URL shown by `display_url` (no password).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy.engine import Connection, Engine

from ledger._clock import utcnow
from ledger._urls import UNPARSABLE, display_url
from ledger.errors import LedgerUnavailable, NoLedger

__all__ = ["Database", "display_url"]

#: Execution option that marks a connection's transaction as a write (``BEGIN IMMEDIATE``).
_WRITE = "smsledger_write"
#: Key of the PostgreSQL advisory lock that serialises schema migrations of one ledger (one schema).
_SCHEMA_LOCK = (
    "SELECT pg_advisory_xact_lock(hashtextextended('smsledger.schema:' || current_schema(), 0))"
)


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


class Database:
    """Owns the engine: how connections open, how transactions start, what errors mean."""

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
        url = self.engine.url
        database = url.database
        if database and database.startswith("file:") and url.query.get("mode") == "rw":
            return Path(unquote(database.removeprefix("file:"))).absolute()  # must_exist's URI
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
