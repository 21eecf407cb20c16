"""Tenant catalogs: items, their embeddings per space, the change log and its head.

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _key(length: int) -> sa.String:
    """A key column: byte order in PostgreSQL ("C"), as in SQLite, so that paging by id
    and listing by name order the same on both, whatever the database's locale."""
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _item_key() -> list[sa.Column[str]]:
    """(tenant_id, catalog, item_id): every catalog row is scoped by its tenant."""
    return [
        sa.Column("tenant_id", _key(64), primary_key=True),
        sa.Column("catalog", _key(64), primary_key=True),
        sa.Column("item_id", _key(256), primary_key=True),
    ]


def upgrade() -> None:
    """Create the catalog tables and the change log's head row."""
    op.create_table(
        "catalogs",
        sa.Column("tenant_id", _key(64), primary_key=True),
        sa.Column("name", _key(64), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "catalog_items",
        *_item_key(),
        sa.Column("text", sa.JSON(), nullable=False),
        sa.Column("attributes", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "catalog_vectors",
        *_item_key(),
        sa.Column("space", sa.String(200), primary_key=True),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id", "catalog", "item_id"],
            ["catalog_items.tenant_id", "catalog_items.catalog", "catalog_items.item_id"],
            ondelete="CASCADE",
        ),
    )
    # The primary key is the index on seq that followers read by.
    op.create_table(
        "catalog_changes",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("tenant_id", _key(64), nullable=False),
        sa.Column("catalog", _key(64), nullable=False),
        sa.Column("item_id", _key(256), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    head = op.create_table(
        "catalog_log_head",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name="catalog_log_head_one_row"),
    )
    op.bulk_insert(head, [{"id": 1, "seq": 0}])


def downgrade() -> None:
    """Drop what `upgrade` created."""
    for table in (
        "catalog_log_head",
        "catalog_changes",
        "catalog_vectors",
        "catalog_items",
        "catalogs",
    ):
        op.drop_table(table)
