"""Texts admitted per quota subject and calendar month, for the limiter that keeps its
buckets in the replica (no Redis): a restarted replica, and every replica on the same
registry, count the month from what is stored.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Create the month_texts table: one row per subject (tenant or key) and month."""
    op.create_table(
        "month_texts",
        sa.Column("subject", sa.String(200), primary_key=True),
        sa.Column("month", sa.Integer(), primary_key=True),  # YYYYMM, UTC
        sa.Column("texts", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    """Drop the month_texts table."""
    op.drop_table("month_texts")
