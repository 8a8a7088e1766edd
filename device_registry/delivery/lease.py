"""The delivery lease: one registry process at a time delivers.

Registry processes scale out on one database, and each serves the API and SSE. Webhook delivery,
the MQTT platform publisher and the case clock must run in one of them only, or every
subscriber gets each message once per process. Their cursors live in the database, so whichever
process holds the lease carries on where the last holder stopped.

- PostgreSQL: a session-level advisory lock on a connection the holder keeps open. A holder that
  dies (or loses its connection) releases it with its session; the standbys try again every
  ``retry_s``, and the holder checks its connection as often.
- SQLite (one machine): an exclusive ``flock`` on ``<database>-delivery.lock``, released by the
  kernel when the holder exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from device_registry.db.faults import classify
from gridwatch.ground.outage import Outage

logger = logging.getLogger(__name__)

_LEASE_KEY = 0x67726465  # any constant, apart from the migrations' lock


class DeliveryLease:
    def __init__(self, engine: AsyncEngine, retry_s: float = 5.0) -> None:
        self.engine = engine
        self.retry_s = retry_s
        self.held = False
        self.outage = Outage(logger, "delivery lease", "database connection",
                             "this process delivers nothing until it holds the lease again")  # fmt: skip

    @contextlib.asynccontextmanager
    async def holding(self) -> AsyncIterator[asyncio.Future[None]]:
        """Wait until this process holds the lease; the future yielded completes if it is lost."""
        if self.engine.dialect.name == "postgresql":
            async with self._advisory() as lost:
                yield lost
        else:
            async with self._flock() as lost:
                yield lost

    @contextlib.asynccontextmanager
    async def _advisory(self) -> AsyncIterator[asyncio.Future[None]]:
        while True:
            conn = await self._try_connect()
            if conn is not None:
                if await self._try_lock(conn):
                    break
                with contextlib.suppress(SQLAlchemyError, OSError):
                    await conn.close()
            await asyncio.sleep(self.retry_s)
        lost = asyncio.get_running_loop().create_future()
        watch = asyncio.create_task(self._watch(conn, lost))
        self._took()
        try:
            yield lost
        finally:
            self.held = False
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            with contextlib.suppress(SQLAlchemyError, OSError):
                await conn.close()  # ends the session, and with it the lock

    async def _try_connect(self) -> AsyncConnection | None:
        try:
            conn = await self.engine.connect()
        except (SQLAlchemyError, OSError) as exc:
            self.outage.failed(classify(exc).reason)
            return None
        self.outage.ok()
        return conn

    async def _try_lock(self, conn: AsyncConnection) -> bool:
        """Whether this connection took the lock; a connection lost meanwhile did not (it was
        an unguarded call once, and its error ended delivery in this process for good)."""
        try:
            return bool(
                await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LEASE_KEY})
            )
        except (SQLAlchemyError, OSError) as exc:
            self.outage.failed(classify(exc).reason)
            return False

    async def _watch(self, conn: AsyncConnection, lost: asyncio.Future[None]) -> None:
        while True:
            await asyncio.sleep(self.retry_s)
            try:
                await conn.scalar(text("SELECT 1"))
            except (SQLAlchemyError, OSError) as exc:
                self.outage.failed(f"lease lost: {classify(exc).reason}")
                lost.set_result(None)
                return

    @contextlib.asynccontextmanager
    async def _flock(self) -> AsyncIterator[asyncio.Future[None]]:
        database = self.engine.url.database
        if not database or database == ":memory:":  # nothing to share with: always the holder
            self._took()
            yield asyncio.get_running_loop().create_future()
            return
        fd = os.open(f"{Path(database)}-delivery.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    await asyncio.sleep(self.retry_s)
            self._took()
            try:
                yield asyncio.get_running_loop().create_future()  # a flock is not lost
            finally:
                self.held = False
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _took(self) -> None:
        self.held = True
        logger.info("this registry process now delivers (webhooks, platform topics, case clock)")
