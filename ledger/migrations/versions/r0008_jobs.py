"""smsledger_jobs: one row per periodic job the daemons share (reconcile), so that with several
daemons on one ledger only one runs it per period.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-12

A new table, nothing else touched. Rows are made on first use by the daemons, so the upgrade
writes none.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "smsledger_jobs",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("last_run_at", sa.DateTime()),
        sa.Column("claim_owner", sa.String(128)),
        sa.Column("claim_expires_at", sa.DateTime()),
    )


def downgrade() -> None:
    op.drop_table("smsledger_jobs")
