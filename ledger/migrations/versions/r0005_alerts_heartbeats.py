"""smsledger_alerts (the alerts outbox) and smsledger_daemons (daemon heartbeats).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-10

Two new tables, nothing else touched: an alert is written in the same transaction as the state
change that causes it, and sent later by a daemon; each daemon writes its heartbeat row every
pass, so `cancel` and `check` can tell whether any daemon is running.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "smsledger_alerts",
        sa.Column("alert_id", sa.String(64), primary_key=True),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("order_id", sa.String(64)),
        sa.Column("state", sa.String(32)),
        sa.Column("reason", sa.Text),
        sa.Column("send_at", sa.DateTime()),
        sa.Column("label", sa.Text),
        sa.Column("at", sa.DateTime(), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("last_error", sa.Text),
        sa.Column("delivered_at", sa.DateTime()),
        sa.Column("claim_owner", sa.String(128)),
        sa.Column("claim_expires_at", sa.DateTime()),
    )
    op.create_index("ix_smsledger_alerts_at", "smsledger_alerts", ["at"])
    op.create_index(
        "ix_smsledger_alerts_status_next_at", "smsledger_alerts", ["status", "next_attempt_at"]
    )
    op.create_table(
        "smsledger_daemons",
        sa.Column("owner", sa.String(128), primary_key=True),
        sa.Column("host", sa.String(255), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("last_pass_at", sa.DateTime()),
    )


def downgrade() -> None:
    op.drop_table("smsledger_daemons")
    op.drop_index("ix_smsledger_alerts_status_next_at", table_name="smsledger_alerts")
    op.drop_index("ix_smsledger_alerts_at", table_name="smsledger_alerts")
    op.drop_table("smsledger_alerts")
