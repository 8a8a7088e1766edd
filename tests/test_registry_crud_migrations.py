"""Migrations: the schema they build is the models' schema, on SQLite and PostgreSQL, and a
database made before migrations existed is upgraded in place."""

from __future__ import annotations

import pytest
from sqlalchemy import inspect, text

from device_registry import RegistryStore
from device_registry.db import migrate
from device_registry.db.engine import make_engine
from device_registry.db.migrate import BASELINE


@pytest.fixture
def url(registry_url: str) -> str:
    return registry_url


async def test_migrations_build_exactly_the_models(url: str) -> None:
    store = await RegistryStore.open(url)
    try:
        async with store.engine.connect() as conn:
            assert await conn.run_sync(migrate.pending) == []
    finally:
        await store.close()


async def test_a_pre_migration_database_is_stamped_and_upgraded(url: str) -> None:
    engine = make_engine(url)
    async with engine.begin() as conn:  # the baseline only, as the old create_all made it
        await conn.run_sync(lambda c: migrate.command.upgrade(migrate.alembic_config(c), BASELINE))
        await conn.execute(text("DROP TABLE alembic_version"))
        await conn.execute(
            text(
                "INSERT INTO gateways (id, online, session, software, config_version, first_seen,"
                " last_seen) VALUES ('old', false, 0, '', 0, 1, 1)"
            )
        )
    await engine.dispose()
    store = await RegistryStore.open(url)
    try:
        [gw] = await store.gateways()
        assert gw.id == "old"
        async with store.engine.connect() as conn:
            cols = await conn.run_sync(
                lambda c: {x["name"] for x in inspect(c).get_columns("gateways")}
            )
        assert {"config_desired", "retired_at"} <= cols
    finally:
        await store.close()
