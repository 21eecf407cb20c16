"""Which key replaced a rotated one: an admin told to rotate the replacement instead
(the 409 of a second rotation) is told which key that is, and the list shows it.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Add api_keys.replaced_by (NULL: never rotated, or rotated before this migration)."""
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("replaced_by", sa.String(64)))


def downgrade() -> None:
    """Drop api_keys.replaced_by."""
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("replaced_by")
