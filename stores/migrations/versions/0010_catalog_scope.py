"""Catalog writes get a scope of their own (`catalog`): a key with `search` alone (one a
browser may hold) reads catalog items but no longer changes or deletes them. Every key
issued before holds `search` for both, so each such key is given `catalog` here and
keeps what it could do.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_KEYS = sa.table("api_keys", sa.column("id", sa.String), sa.column("scopes", sa.Text))


def _rescope(add: bool) -> None:
    bind = op.get_bind()
    for key_id, scopes in bind.execute(sa.select(_KEYS.c.id, _KEYS.c.scopes)).all():
        held = set(json.loads(scopes))
        if add and "search" in held:
            held.add("catalog")
        elif not add:
            held.discard("catalog")
        new = json.dumps(sorted(held))
        if new != scopes:
            bind.execute(_KEYS.update().where(_KEYS.c.id == key_id).values(scopes=new))


def upgrade() -> None:
    """Give `catalog` to every key that holds `search`."""
    _rescope(add=True)


def downgrade() -> None:
    """Take `catalog` from every key (catalog writes need `search` again)."""
    _rescope(add=False)
