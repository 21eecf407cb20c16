"""Alembic's entry point for the schema of the registry's database (tenants, keys, usage
and the catalogs: one history).

Run by `stores.registry_sql.migrate_database()` (behind `SqlRegistry.migrate()` and
`SqlCatalogStore.migrate()`), which passes an open connection (already inside the
transaction that holds the migration lock) through `config.attributes["connection"]`;
there is no alembic.ini and no URL here.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from stores.registry_sql import VERSION_TABLE

connection = context.config.attributes.get("connection")
if not isinstance(connection, Connection):
    raise RuntimeError("run the migrations through stores.registry_sql.migrate_database()")

context.configure(
    connection=connection,
    version_table=VERSION_TABLE,
    # SQLite alters tables by copying them; batch mode lets later migrations do so.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
