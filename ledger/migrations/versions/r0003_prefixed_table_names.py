"""The ledger's tables renamed smsledger_orders and smsledger_order_events.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

The generic names ``orders`` and ``order_events`` collided with an application's own tables when
a ledger shares its database or schema. Renamed in place with their indexes, rows and history
untouched. On PostgreSQL the primary and foreign key constraints and the events id sequence, which
PostgreSQL named after the tables (``orders_pkey``, ``order_events_order_id_fkey``,
``order_events_id_seq``), are renamed too, so no name of the ledger's stays unprefixed; each only
when it still has the name PostgreSQL gave it. A rename is a catalog change on both engines: no
table is copied or rewritten.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: (old name, new name): ``orders`` first, so SQLite rewrites the events' foreign key to it.
_TABLES = (("orders", "smsledger_orders"), ("order_events", "smsledger_order_events"))
#: (old name, new name, table's new name, columns)
_INDEXES = (
    ("ix_orders_state_send_at", "ix_smsledger_orders_state_send_at", "smsledger_orders",
     ("state", "send_at")),
    ("ix_order_events_order_id", "ix_smsledger_order_events_order_id", "smsledger_order_events",
     ("order_id",)),
)  # fmt: skip
#: PostgreSQL only: (table's new name, old constraint name, new constraint name)
_CONSTRAINTS = (
    ("smsledger_orders", "orders_pkey", "smsledger_orders_pkey"),
    ("smsledger_order_events", "order_events_pkey", "smsledger_order_events_pkey"),
    (
        "smsledger_order_events",
        "order_events_order_id_fkey",
        "smsledger_order_events_order_id_fkey",
    ),
)
#: PostgreSQL only: the sequence behind the events' id (SERIAL since revision 0001).
_SEQUENCE = ("order_events_id_seq", "smsledger_order_events_id_seq")


def upgrade() -> None:
    _rename(forward=True)


def downgrade() -> None:
    _rename(forward=False)


def _rename(*, forward: bool) -> None:
    """Rename every name from the old to the new (`forward`) or back."""

    def pick(old: str, new: str) -> tuple[str, str]:
        return (old, new) if forward else (new, old)

    def table_now(new_table: str) -> str:  # the table's name once the tables are renamed
        return new_table if forward else {new: old for old, new in _TABLES}[new_table]

    renames = [pick(old, new) for old, new in _TABLES]
    for source, target in renames if forward else reversed(renames):
        op.rename_table(source, target)

    if op.get_context().dialect.name != "postgresql":
        # SQLite renames no index: each is dropped and made again under its new name.
        for old, new, table, columns in _INDEXES:
            source, target = pick(old, new)
            op.drop_index(source, table_name=table_now(table))
            op.create_index(target, table_now(table), list(columns))
        return

    for old, new, _, _ in _INDEXES:
        op.execute("ALTER INDEX {} RENAME TO {}".format(*pick(old, new)))
    bind = op.get_bind()
    for table, old, new in _CONSTRAINTS:
        source, target = pick(old, new)
        named = bind.execute(
            sa.text(
                "SELECT 1 FROM pg_constraint "
                "WHERE conrelid = to_regclass(:table) AND conname = :name"
            ),
            {"table": table_now(table), "name": source},
        ).first()
        if named is not None:
            op.execute(f"ALTER TABLE {table_now(table)} RENAME CONSTRAINT {source} TO {target}")
    sequence = bind.execute(
        sa.text("SELECT pg_get_serial_sequence(:table, 'id')"),
        {"table": table_now("smsledger_order_events")},
    ).scalar()
    source, target = pick(*_SEQUENCE)
    if sequence is not None and sequence.rsplit(".", 1)[-1].strip('"') == source:
        op.execute(f"ALTER SEQUENCE {sequence} RENAME TO {target}")
