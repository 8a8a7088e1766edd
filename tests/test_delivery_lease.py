"""The delivery lease's standby tells ``/health`` whether some process delivers (issue 17): "not
needed, another process delivers" only while a live holder has the lease; a holder that hangs,
or a database that no process can reach, is said to deliver nothing.

Real PostgreSQL: the session's for a live and a hung holder, one of the test's own to crash."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import asyncpg
from sqlalchemy.ext.asyncio import create_async_engine

from device_registry.delivery.lease import _LEASE_KEY, DeliveryLease, Elsewhere
from device_registry.delivery.runtime import (
    LEASE,
    OPS,
    WAITING_FOR_DATABASE,
    Delivery,
    publisher_part,
)
from device_registry.health.centre import Level
from device_registry.health.routes import _session
from device_registry.inventory.downlink import BrokerSettings
from gridwatch.ground.mqttsession import SessionState
from tests._ops_helpers import registry
from tests.services import Mosquitto, Postgres

RETRY_S = 0.2  # the lease's tries; a holder idle for 3 of them (0.6 s) has hung


@contextlib.asynccontextmanager
async def lease_on(url: str) -> AsyncIterator[DeliveryLease]:
    """A registry process's lease, trying to take it in a task (as ``runtime.py`` does)."""
    engine = create_async_engine(url)
    lease = DeliveryLease(engine, retry_s=RETRY_S)

    async def hold() -> None:
        async with lease.holding() as lost:
            await lost

    task = asyncio.create_task(hold())
    try:
        yield lease
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await engine.dispose()


async def until(what: str, check: Callable[[], bool], within_s: float = 10) -> None:
    async with asyncio.timeout(within_s):
        # another task's view of the database: polled, with a deadline
        while not check():  # noqa: ASYNC110
            await asyncio.sleep(0.05)


def health_of(lease: DeliveryLease) -> tuple[Level, str]:
    """What ``/health`` says of the platform publisher of a process with ``lease`` whose
    broker session is not connected (a standby's is not: it does not publish)."""
    dep = _session("platform publisher", publisher_part(lease, SessionState()))
    return dep.status, dep.reason


async def test_a_standby_says_another_process_delivers_only_while_a_live_one_holds_the_lease(
    pg_url: str,
) -> None:
    async with lease_on(pg_url) as first:
        await until("the first takes the lease", lambda: first.held)
        async with lease_on(pg_url) as second:
            await until("the standby sees the holder", lambda: second.elsewhere is Elsewhere.LIVE)
            assert health_of(second) == (Level.OK, f"not connected ({Elsewhere.LIVE.value})")
            assert not second.held


async def test_a_hung_holder_is_no_process_delivering(pg_url: str) -> None:
    """A holder that keeps its connection and the lock but runs nothing (SIGSTOP, a frozen VM):
    here a bare connection holding the lock."""
    hung = await asyncpg.connect(pg_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        assert await hung.fetchval("SELECT pg_try_advisory_lock($1)", _LEASE_KEY)
        async with lease_on(pg_url) as standby:
            await until(
                "the standby sees the holder hang", lambda: standby.elsewhere is Elsewhere.HUNG
            )
            status, reason = health_of(standby)
            assert status is Level.DOWN and "no registry process delivers" in reason, reason
            assert not standby.held
    finally:
        await hung.close()


async def test_with_the_database_down_no_process_is_said_to_deliver(own_postgres: Postgres) -> None:
    url = own_postgres.create_database("lease")
    async with lease_on(url) as first, lease_on(url) as second:
        await until("one holds the lease", lambda: first.held or second.held)
        standby = second if first.held else first
        await until("the standby sees the holder", lambda: standby.elsewhere is Elsewhere.LIVE)
        own_postgres.stop()  # -m immediate: a crash; the holder loses its lease with it
        try:
            await until(
                "the standby knows no holder", lambda: standby.elsewhere is Elsewhere.UNKNOWN
            )
            status, reason = health_of(standby)
            # the truth: the bridges relay device alerts; what the registry says itself waits
            assert status is Level.DEGRADED, reason
            assert reason.startswith(WAITING_FOR_DATABASE), reason
        finally:
            own_postgres.start()
        await until("one holds the lease again", lambda: first.held or second.held, within_s=30)


async def test_the_platform_session_stays_up_through_a_database_outage(
    own_postgres: Postgres, mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """The lease goes with the database; the platform publisher's broker session does not (no
    MQTT reconnect because the database went away), and /health says what still reaches the
    platform rather than "down"."""
    url = own_postgres.create_database("session")
    target = BrokerSettings(mosquitto.host, mosquitto.port, prefix, client_id=f"reg-{prefix}")
    delivery = Delivery(mqtt=target, poll_s=0.2, lease_retry_s=RETRY_S)
    async with registry(tmp_path, delivery, db_url=url) as reg:
        lease, publisher = reg.app[LEASE], reg.app[OPS].publisher
        assert publisher is not None
        await until("the publisher connected", lambda: lease.held and publisher.connected)
        connected_since = publisher.mqtt.state.since
        own_postgres.stop()
        try:
            await until("the lease lost", lambda: not lease.held)
            await until("the database down seen", lambda: lease.database_down)
            async with reg.http.get(f"{reg.url}/health") as r:
                body = await r.json()
            part = next(d for d in body["dependencies"] if d["name"] == "platform publisher")
            assert part["status"] == "degraded", part
            assert part["reason"] == f"{WAITING_FOR_DATABASE} (broker session connected)"
            assert publisher.connected and publisher.mqtt.state.since == connected_since
        finally:
            own_postgres.start()
        await until("the lease back", lambda: lease.held, within_s=30)
        assert publisher.connected and publisher.mqtt.state.since == connected_since
