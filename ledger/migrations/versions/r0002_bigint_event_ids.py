"""order_events.id as bigint on PostgreSQL.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

The history is append-only and never pruned. On PostgreSQL the baseline made its id a SERIAL:
a 32-bit column and sequence, exhausted at 2,147,483,647 events (about five events per cancelled
order, one per order registered: a few thousand 200,000-recipient campaigns). SQLite's INTEGER
PRIMARY KEY is already 64 bits, so there this revision changes nothing.

On PostgreSQL the column type change rewrites `order_events` under an exclusive lock: on a large
history, run `smsledger migrate` while the daemons are stopped.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_SEQUENCE_AS = """
DO $$
DECLARE seq text := pg_get_serial_sequence('order_events', 'id');
BEGIN
    IF seq IS NOT NULL THEN
        EXECUTE format('ALTER SEQUENCE %s AS {type}', seq);
    END IF;
END $$
"""


def upgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.alter_column(
        "order_events", "id", type_=sa.BigInteger(), existing_type=sa.Integer(), nullable=False
    )
    op.execute(_SEQUENCE_AS.format(type="bigint"))


def downgrade() -> None:
    if op.get_context().dialect.name != "postgresql":
        return
    op.execute(_SEQUENCE_AS.format(type="integer"))
    op.alter_column(
        "order_events", "id", type_=sa.Integer(), existing_type=sa.BigInteger(), nullable=False
    )
