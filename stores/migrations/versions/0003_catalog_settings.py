"""Catalog settings (e.g. whether searches fuse BM25 by default).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add the settings column; existing catalogs get none (the service defaults)."""
    with op.batch_alter_table("catalogs") as batch:
        batch.add_column(
            sa.Column("settings", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )


def downgrade() -> None:
    """Drop the settings column."""
    with op.batch_alter_table("catalogs") as batch:
        batch.drop_column("settings")
