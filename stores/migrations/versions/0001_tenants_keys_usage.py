"""Tenants, API keys, daily usage and the generation counter.

Revision ID: 0001
Revises:
Create Date: 2026-05-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _limits() -> list[sa.Column[float] | sa.Column[int]]:
    """Rate-limit columns; NULL: unlimited (on a key: the tenant's value)."""
    return [
        sa.Column("requests_per_s", sa.Float()),
        sa.Column("texts_per_s", sa.Float()),
        sa.Column("monthly_texts", sa.BigInteger()),
    ]


def upgrade() -> None:
    """Create the four tables and the generation row."""
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        *_limits(),
        sa.Column("disabled", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(64), sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(128), nullable=False, unique=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("scopes", sa.Text(), nullable=False),
        sa.Column("models", sa.Text()),
        sa.Column("may_pin", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True)),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
        *_limits(),
    )
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"])
    op.create_index("ix_api_keys_tenant_id", "api_keys", ["tenant_id"])
    op.create_table(
        "usage",
        sa.Column("tenant_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("texts", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
    )
    meta = op.create_table(
        "meta",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("generation", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name="meta_one_row"),
    )
    op.bulk_insert(meta, [{"id": 1, "generation": 0}])


def downgrade() -> None:
    """Drop what `upgrade` created."""
    for table in ("meta", "usage", "api_keys", "tenants"):
        op.drop_table(table)
