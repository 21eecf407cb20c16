"""Interactions (`POST /v1/events`): the durable log online features are rebuilt from.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _key(length: int) -> sa.String:
    """A key column: byte order in PostgreSQL ("C"), as in SQLite (see 0002)."""
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    """Create the events table; a tenant's events are read by seq, a user's by user."""
    op.create_table(
        "events",
        # SQLite's rowid alias (INTEGER PRIMARY KEY) autoincrements; BIGINT would not.
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("tenant_id", _key(64), nullable=False),
        sa.Column("user_id", _key(256), nullable=False),
        sa.Column("item_id", _key(256), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("catalog", _key(64)),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_events_tenant_seq", "events", ["tenant_id", "seq"])
    op.create_index("ix_events_tenant_user_seq", "events", ["tenant_id", "user_id", "seq"])


def downgrade() -> None:
    """Drop the events table."""
    op.drop_table("events")
