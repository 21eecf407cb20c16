"""Batches of events appended once: the key a `POST /v1/events` was sent with
(`Idempotency-Key`, else `X-Request-ID`), kept per tenant with the batch in the
transaction that appends it, so that a repeat within a day is answered as the first was
instead of being appended again.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def _key(length: int) -> sa.String:
    """A key column: byte order in PostgreSQL ("C"), as in SQLite (see 0002)."""
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    """Create the event_batches table; a tenant's keys expire by their age."""
    op.create_table(
        "event_batches",
        sa.Column("tenant_id", _key(64), nullable=False),
        sa.Column("batch_key", _key(128), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("accepted", sa.Integer(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("merged", sa.SmallInteger(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("tenant_id", "batch_key"),
    )
    op.create_index("ix_event_batches_tenant_created", "event_batches", ["tenant_id", "created_at"])


def downgrade() -> None:
    """Drop the event_batches table."""
    op.drop_table("event_batches")
