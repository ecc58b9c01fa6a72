"""The table of lead observations: get-report answers that bound the provider's queue lead.

Revision ID: 0006
Revises: 0004
Create Date: 2026-12-01

Every get-report answer about an order with time left says whether the order's queue lead is less
than (456) or at least (113, 114) the seconds left then; `smsledger margins` turns them into a
measured cutoff. A new table only: nothing existing is touched.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_TABLE = "smsledger_lead_observations"


def upgrade() -> None:
    op.create_table(
        _TABLE,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            nullable=False,
        ),
        sa.Column(
            "order_id",
            sa.String(64),
            sa.ForeignKey("smsledger_orders.order_id"),
            nullable=False,
        ),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("seconds_left", sa.Float(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("probe_step", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.UniqueConstraint("order_id", "probe_step", name=f"{_TABLE}_probe_step_key"),
    )
    op.create_index(f"ix_{_TABLE}_order_id", _TABLE, ["order_id"])
    op.create_index(f"ix_{_TABLE}_at", _TABLE, ["at"])


def downgrade() -> None:
    op.drop_index(f"ix_{_TABLE}_at", table_name=_TABLE)
    op.drop_index(f"ix_{_TABLE}_order_id", table_name=_TABLE)
    op.drop_table(_TABLE)
