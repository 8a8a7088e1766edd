"""Schema migrations (Alembic): every store is upgraded to the newest revision when it opens.

A database made before migrations existed (tables created straight from the models, no
``alembic_version``) is stamped as the baseline first, then upgraded like any other.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, MetaData, inspect

BASELINE = "r0001"
_HERE = Path(__file__).resolve().parent / "migrations"


def alembic_config(connection: Connection, metadata: MetaData | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    cfg.attributes["connection"] = connection
    if metadata is not None:
        cfg.attributes["metadata"] = metadata
    return cfg


def upgrade(connection: Connection) -> None:
    """Bring the schema to head (sync: call through ``AsyncConnection.run_sync``)."""
    cfg = alembic_config(connection)
    current = MigrationContext.configure(connection).get_current_revision()
    if current is None and inspect(connection).has_table("gateways"):
        command.stamp(cfg, BASELINE)
    command.upgrade(cfg, "head")


def pending(connection: Connection) -> list[tuple[object, ...]]:
    """Differences between the models and the migrated schema (empty when they agree)."""
    from alembic.autogenerate import compare_metadata

    from device_registry.models import Base

    ctx = MigrationContext.configure(connection, opts={"compare_type": True})
    return [
        tuple(d) if isinstance(d, tuple) else (d,) for d in compare_metadata(ctx, Base.metadata)
    ]
