"""An index on (label, order_id) of smsledger_orders: campaigns are read by label.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01

`Ledger.request_cancel_many(label=...)`, ``smsledger list --label`` and ``smsledger summary`` read
a campaign's orders in order-id pages; without the index each page scans the whole table. Building
it reads the table once; no row changes.
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_INDEX = "ix_smsledger_orders_label_order_id"
_TABLE = "smsledger_orders"


def upgrade() -> None:
    op.create_index(_INDEX, _TABLE, ["label", "order_id"])


def downgrade() -> None:
    op.drop_index(_INDEX, table_name=_TABLE)
