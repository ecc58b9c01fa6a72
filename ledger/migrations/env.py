"""Alembic's entry point for the ledger's revisions; run by `ledger.schema`, never by hand.

`ledger.schema` hands over a connection already inside the migration transaction (SQLite: the
write lock; PostgreSQL: a transaction holding the schema advisory lock), so every revision of one
upgrade commits or rolls back together. Without one (a developer calling Alembic's commands with
``ledger.schema.alembic_config(url)``), the URL is opened the same way.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from ledger.models import METADATA
from ledger.schema import VERSION_TABLE
from ledger.store import Store


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        version_table=VERSION_TABLE,
        # SQLite DDL is transactional too; the caller's transaction holds the write lock.
        transactional_ddl=True,
        # SQLite alters most columns only by copying the table: let autogenerate say so.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def _main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("run the ledger's migrations through ledger.schema, or give a URL")
    store = Store(url)
    try:
        with store.schema_lock() as conn:
            _run(conn)
    finally:
        store.dispose()


if context.is_offline_mode():
    raise RuntimeError("the ledger's migrations run online only (no --sql)")
_main()
