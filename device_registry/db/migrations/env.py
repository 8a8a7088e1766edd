"""Alembic environment: runs on the connection ``device_registry.db.migrate`` hands it.

Run programmatically only (the app upgrades to head at start-up); there is no alembic.ini.
"""

from __future__ import annotations

from alembic import context

from device_registry.db.tables import Base

config = context.config
connection = config.attributes["connection"]
target_metadata = config.attributes.get("metadata", Base.metadata)

# SQLite cannot ALTER most things: batch mode copies the table instead, on SQLite only
context.configure(
    connection=connection,
    target_metadata=target_metadata,
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
