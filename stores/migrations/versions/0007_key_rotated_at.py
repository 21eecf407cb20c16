"""When a key was rotated out: a key is rotated once; its replacement is rotated next.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add api_keys.rotated_at (NULL: never rotated)."""
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("rotated_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    """Drop api_keys.rotated_at."""
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("rotated_at")
