"""Baseline: the schema smsledger created before it versioned its schema.

Revision ID: 0001
Revises: -
Create Date: 2026-11-27

A ledger created before Alembic (tables `orders` and `order_events`, no version table) is exactly
this revision; `ledger.schema` stamps it 0001 instead of running this script.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "orders",
        sa.Column("order_id", sa.String(64), primary_key=True),
        sa.Column("send_at", sa.DateTime(), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("cancel_requested_at", sa.DateTime(), nullable=True),
        sa.Column("cancel_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("check_attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("last_provider_code", sa.Integer(), nullable=True),
        sa.Column("warned_at", sa.DateTime(), nullable=True),
        sa.Column("claim_owner", sa.String(128), nullable=True),
        sa.Column("claim_expires_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_orders_state_send_at", "orders", ["state", "send_at"])
    op.create_table(
        "order_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.order_id"), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("from_state", sa.String(32), nullable=True),
        sa.Column("to_state", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=True),
    )
    op.create_index("ix_order_events_order_id", "order_events", ["order_id"])


def downgrade() -> None:
    raise NotImplementedError("the baseline is not downgraded: that would delete the ledger")
