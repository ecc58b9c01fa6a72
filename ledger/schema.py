"""The ledger's versioned schema: Alembic revisions in ``ledger/migrations``, run in-process.

Every `Ledger` brings its database to the newest revision this smsledger knows before it is used
(`upgrade`); `migrate` does the same for ``smsledger migrate``. Where the ledger stands:

- no ledger tables and no version table: a new ledger, created from the models (`METADATA`) and
  stamped with the newest revision (Alembic's "building an up to date database from scratch"):
  running every revision would create the pre-0003 names first and fail beside an application's
  own ``orders``; a test holds the two ways to the same schema;
- ``orders`` and ``order_events`` (the names before revision 0003) with the baseline's columns but
  no version table: a ledger made before the schema was versioned, which is revision 0001 (the
  baseline) exactly; it is stamped 0001, then upgraded (and its tables renamed by 0003);
- an ``orders`` table without the baseline's columns is the application's, not a ledger: the
  ledger is created beside it under its own ``smsledger_`` names and leaves it alone;
- a revision older than the newest: upgraded in place, every step in one transaction;
- a revision this smsledger does not know: written by a newer smsledger, refused (`SchemaTooNew`)
  before anything is written.

Several processes may start at once: the migration runs under `Store.schema_lock` (SQLite's write
lock, a PostgreSQL advisory lock) and each process looks again once it holds the lock, so one
upgrades and the others find the work done. The version table is ``smsledger_alembic_version``,
not Alembic's default, so a ledger can share a PostgreSQL schema with an application that keeps
its own Alembic history.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ledger._log import get_logger
from ledger.errors import SchemaError, SchemaTooNew
from ledger.models import EVENTS_TABLE, METADATA, ORDERS_TABLE
from ledger.store import Store, display_url

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig
    from alembic.script import ScriptDirectory

__all__ = [
    "BASELINE",
    "HEAD",
    "VERSION_TABLE",
    "alembic_config",
    "current_revision",
    "head_revision",
    "known_revisions",
    "migrate",
    "upgrade",
]

log = get_logger("smsledger.ledger")

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
VERSION_TABLE = "smsledger_alembic_version"
#: The revision a ledger created before versioning is stamped with.
BASELINE = "0001"
#: The newest revision in ``ledger/migrations`` (a test holds the two together). Opening a ledger
#: already there reads one row and never imports Alembic, which costs a command ~0.3 s.
HEAD = "0008"
#: The tables of a ledger made before versioning (named so until revision 0003).
_UNVERSIONED_TABLES = ("orders", "order_events")
#: The tables revision 0003 and later have.
_LEDGER_TABLES = (ORDERS_TABLE, EVENTS_TABLE)
#: Columns the baseline's ``orders`` has; a table of that name without them is not a ledger.
_BASELINE_ORDER_COLUMNS = frozenset(
    {"order_id", "send_at", "state", "cancel_attempts", "claim_owner", "claim_expires_at"}
)


def alembic_config(url: str | None = None, connection: Connection | None = None) -> AlembicConfig:
    """An Alembic config for the ledger's revisions, without any alembic.ini.

    With `connection`, Alembic runs inside that connection's transaction; with `url` alone (for a
    developer calling ``alembic.command`` to write a new revision), ``env.py`` opens it.
    """
    from alembic.config import Config as AlembicConfig  # noqa: PLC0415 (see HEAD)

    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


@cache
def _script() -> ScriptDirectory:
    from alembic.script import ScriptDirectory  # noqa: PLC0415 (see HEAD)

    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest schema revision this smsledger knows (read from the revision scripts)."""
    head = _script().get_current_head()
    assert head is not None, "ledger/migrations has no revisions"
    return head


def known_revisions() -> frozenset[str]:
    """Every revision in ``ledger/migrations``."""
    return frozenset(s.revision for s in _script().walk_revisions())


def current_revision(conn: Connection) -> str | None:
    """The revision the ledger behind `conn` is at: None for no ledger, the baseline for an
    unversioned one; `SchemaError` for a damaged one."""
    inspector = sa.inspect(conn)
    if inspector.has_table(VERSION_TABLE):
        version = sa.table(VERSION_TABLE, sa.column("version_num", sa.String))
        heads: list[str] = sorted(conn.execute(sa.select(version.c.version_num)).scalars())
        if len(heads) > 1:
            raise SchemaError(f"the ledger's schema has several revisions at once: {heads}")
        if heads:
            return heads[0]
    tables = set(inspector.get_table_names())
    unversioned = [t for t in _LEDGER_TABLES if t in tables]
    if unversioned:
        raise SchemaError(
            f"the database has smsledger's table {unversioned[0]!r} but no schema revision in "
            f"{VERSION_TABLE} (tables not made by smsledger's migrations?); point ledger.url at "
            "another database or schema, or restore the ledger from a backup"
        )
    orders, events = _UNVERSIONED_TABLES
    if orders not in tables:
        return None  # an `order_events` alone is not a ledger either
    if not _BASELINE_ORDER_COLUMNS.issubset(c["name"] for c in inspector.get_columns(orders)):
        return None  # the application's own `orders`: the ledger's tables have other names
    if events not in tables:
        raise SchemaError(
            f"the database has a ledger's table {orders!r} without its {events!r} "
            "(a damaged ledger made before versioning); restore it from a backup or point "
            "ledger.url at another database or schema"
        )
    return BASELINE


def upgrade(store: Store) -> tuple[str | None, str]:
    """Bring the ledger to the newest revision; return (revision found, revision now).

    The revision found is None for a database that held no ledger. Raises `SchemaTooNew` for a
    ledger migrated by a newer smsledger, leaving it untouched.
    """
    with store.read() as conn:
        found = current_revision(conn)
    if found == HEAD:
        return found, HEAD
    from alembic import command  # noqa: PLC0415 (see HEAD)
    from alembic.util import CommandError  # noqa: PLC0415 (see HEAD)

    head = head_revision()
    _refuse_unknown(store, found, head)
    with store.schema_lock() as conn:
        found = current_revision(conn)  # another process may have migrated meanwhile
        _refuse_unknown(store, found, head)
        if found == head:
            return found, head
        config = alembic_config(connection=conn)
        try:
            if found is None:
                METADATA.create_all(conn)
                command.stamp(config, head)
            else:
                if found == BASELINE and not _is_versioned(conn):
                    command.stamp(config, BASELINE)
                    log.info(
                        "ledger_schema_stamped", ledger=display_url(store.url), revision=BASELINE
                    )
                command.upgrade(config, "head")
        except (sa.exc.SQLAlchemyError, CommandError) as exc:  # rolled back on the way out
            detail = " ".join(str(getattr(exc, "orig", None) or exc).split())
            raise SchemaError(
                f"migrating ledger {display_url(store.url)} from {found or 'an empty database'} "
                f"to {head} failed: {detail}; nothing was changed"
            ) from exc
    log.info(
        "ledger_schema_migrated",
        ledger=display_url(store.url),
        from_revision=found,
        to_revision=head,
    )
    return found, head


def migrate(url: str) -> tuple[str | None, str]:
    """``smsledger migrate``: upgrade the ledger at `url`; return (revision found, revision now).

    The same as opening a `Ledger` there, without the rest; raises `LedgerUnavailable`,
    `SchemaError` or `SchemaTooNew` with a message fit for the user.
    """
    store = Store(url)
    try:
        return upgrade(store)
    finally:
        store.dispose()


def _is_versioned(conn: Connection) -> bool:
    return sa.inspect(conn).has_table(VERSION_TABLE)


def _refuse_unknown(store: Store, found: str | None, head: str) -> None:
    if found is not None and found not in known_revisions():
        raise SchemaTooNew(display_url(store.url), found, head)
