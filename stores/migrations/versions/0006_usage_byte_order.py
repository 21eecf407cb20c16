"""Usage rows in byte order on PostgreSQL, as in SQLite: `GET /v1/usage` lists a day's
models by name, and a locale's collation (en_US ignores `-` and `_` at first) put
`minilm_l12` before `minilm-l6` there and after it here.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """The usage table's tenant and model columns in the "C" collation (PostgreSQL)."""
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite compares bytes already
    op.alter_column("usage", "tenant_id", type_=sa.String(64, collation="C"))
    op.alter_column("usage", "model", type_=sa.String(200, collation="C"))


def downgrade() -> None:
    """The database's default collation again (PostgreSQL)."""
    if op.get_bind().dialect.name != "postgresql":
        return
    op.alter_column("usage", "tenant_id", type_=sa.String(64))
    op.alter_column("usage", "model", type_=sa.String(200))
