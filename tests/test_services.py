"""The test infrastructure itself: each real component starts, answers and stops."""

from __future__ import annotations

import asyncio
import uuid

import aiomqtt
import asyncpg

from tests.services import Mosquitto, Postgres, Victoria


async def test_mosquitto_round_trip(mosquitto: Mosquitto, prefix: str) -> None:
    async with aiomqtt.Client(mosquitto.host, mosquitto.port) as sub:
        await sub.subscribe(f"{prefix}/#", qos=1)
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as pub:
            await pub.publish(f"{prefix}/x", b"hello", qos=1)
        msg = await asyncio.wait_for(anext(aiter(sub.messages)), 5)
        assert msg.payload == b"hello"


def test_victoria_accepts_influx_line_protocol(victoria: Victoria) -> None:
    from influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS

    name = "probe" + uuid.uuid4().hex[:6]
    with InfluxDBClient(url=victoria.url, token="x", org="x") as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            "b", record=f"{name},device=d1 value=1.5 1700000000000", write_precision="ms"
        )
    rows = victoria.export(f"{name}_value")
    assert rows[0]["values"] == [1.5]
    assert rows[0]["timestamps"] == [1700000000000]


async def test_postgres_database_per_test(pg_url: str, postgres: Postgres) -> None:
    dsn = pg_url.replace("postgresql+asyncpg", "postgresql")
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()
