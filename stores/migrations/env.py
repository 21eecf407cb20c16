"""Alembic's entry point for the registry schema.

Run by `SqlRegistry.migrate()`, which passes an open connection (already inside the
transaction that holds the migration lock) through `config.attributes["connection"]`;
there is no alembic.ini and no URL here.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from stores.registry_sql import VERSION_TABLE

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run the registry migrations through SqlRegistry.migrate()")

context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    # SQLite alters tables by copying them; batch mode lets later migrations do so.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
