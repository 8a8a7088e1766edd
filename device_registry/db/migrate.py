"""Schema migrations (Alembic): every store is upgraded to the newest revision when it opens.

A database made before migrations existed (tables created straight from the models, no
``alembic_version``) is stamped as the baseline first, then upgraded like any other.
"""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, MetaData, inspect, text

from gridwatch.ground.shipped import shipped

BASELINE = "r0001"
# package data (env.py, script.py.mako, versions/), so an installed registry migrates too
_SCRIPTS = shipped("device_registry.db.migrations")


def alembic_config(connection: Connection, metadata: MetaData | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_SCRIPTS))
    cfg.attributes["connection"] = connection
    if metadata is not None:
        cfg.attributes["metadata"] = metadata
    return cfg


# any constant: the PostgreSQL advisory lock that serialises schema upgrades
_UPGRADE_LOCK = 0x67726964  # "grid"


def upgrade(connection: Connection) -> None:
    """Bring the schema to head (sync: call through ``AsyncConnection.run_sync``).

    Bridges and registry processes may start at the same moment on one fresh database: each
    upgrade first takes a lock for its whole transaction (a transaction-scoped advisory lock on
    PostgreSQL, the write lock on SQLite, whose driver would otherwise begin only at the first
    write), so one migrates and the others find the schema at head.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
    elif connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    cfg = alembic_config(connection)
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None and inspect(connection).has_table("gateways"):
        command.stamp(cfg, BASELINE)
    command.upgrade(cfg, "head")


def pending(connection: Connection) -> list[tuple[object, ...]]:
    """Differences between the models and the migrated schema (empty when they agree)."""
    from alembic.autogenerate import compare_metadata

    from device_registry.db.tables import Base

    ctx = MigrationContext.configure(connection, opts={"compare_type": True})
    return [
        tuple(d) if isinstance(d, tuple) else (d,) for d in compare_metadata(ctx, Base.metadata)
    ]
