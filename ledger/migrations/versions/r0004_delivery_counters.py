"""The orders' delivery counters: total, delivered, undelivered, waiting, delivery_checked_at.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

What the provider reports of an order's messages (get-report, get-reports), recorded by
reconcile and the daemon's dispatch follow-up. All nullable and null until known: adding a
nullable column without a default is a catalog change on both engines, no table is rewritten.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_TABLE = "smsledger_orders"
_COUNTERS = ("total", "delivered", "undelivered", "waiting")


def upgrade() -> None:
    for name in _COUNTERS:
        op.add_column(_TABLE, sa.Column(name, sa.Integer(), nullable=True))
    op.add_column(_TABLE, sa.Column("delivery_checked_at", sa.DateTime(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN in place (SQLite 3.35+): a batch copy of the table would have
    # to drop the orders table, which the events' foreign key forbids.
    for name in ("delivery_checked_at", *reversed(_COUNTERS)):
        op.execute(f"ALTER TABLE {_TABLE} DROP COLUMN {name}")
