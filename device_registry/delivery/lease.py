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

A standby says whether some process delivers (``elsewhere``), for ``/health``: "not needed,
another process delivers" only while its last try, at most ``FRESH_TRIES`` tries ago, found the
lease held by a holder that is alive. On PostgreSQL alive means that the holder's connection ran
a statement within ``STALE_TRIES`` of its checks (it checks every ``retry_s``; a holder that
hangs, SIGSTOP or a frozen VM, keeps its connection and the lock, and delivers nothing). A
standby that cannot reach the database knows no holder: while the database is down, no process
delivers either (each holder loses its lease with its connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from enum import Enum
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from device_registry.db.faults import classify
from gridwatch.ground.outage import Outage

logger = logging.getLogger(__name__)

_LEASE_KEY = 0x67726465  # any constant, apart from the migrations' lock
FRESH_TRIES = 2.5
"""A standby's word on the holder is good for this many of its tries (``retry_s`` each)."""
STALE_TRIES = 3.0
"""A holder whose connection ran nothing for this many ``retry_s`` has hung."""

# the holder's backend and when it last ran a statement (a bigint advisory key is split into
# classid, the high half, and objid, the low half, with objsubid 1)
_HOLDER_IDLE = text(
    "SELECT extract(epoch FROM clock_timestamp() - a.query_start) FROM pg_locks l "
    "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
    "AND l.classid = 0 AND l.objid = :k AND l.objsubid = 1 "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


class Elsewhere(Enum):
    """What a standby last found about the lease's holder."""

    UNKNOWN = (
        "no registry process is known to deliver: this one cannot reach the database to take "
        "the delivery lease"
    )
    LIVE = "not needed: another registry process delivers"
    HUNG = (
        "no registry process delivers: the one holding the delivery lease has not used its "
        "database connection for a while (hung?); this one takes over when it lets go"
    )


class DeliveryLease:
    def __init__(
        self, engine: AsyncEngine, retry_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.engine = engine
        self.retry_s = retry_s
        self.clock = clock
        self.held = False
        self._found = Elsewhere.UNKNOWN
        self._found_at: float | None = None
        self.another_delivers = asyncio.Event()
        """Set when a try finds the lease held by a live process other than this one; cleared
        when this one takes it: what ends a platform session kept across a lost lease."""
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
                took = await self._try_lock(conn)
                if took:
                    break
                if took is False:  # another process holds it
                    await self._look_at_holder(conn)
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

    async def _try_lock(self, conn: AsyncConnection) -> bool | None:
        """Whether this connection took the lock (False: another holds it); None when the
        connection was lost meanwhile (it was an unguarded call once, and its error ended
        delivery in this process for good)."""
        try:
            return bool(
                await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": _LEASE_KEY})
            )
        except (SQLAlchemyError, OSError) as exc:
            self.outage.failed(classify(exc).reason)
            return None

    async def _look_at_holder(self, conn: AsyncConnection) -> None:
        """Another process holds the lease: is it alive (``Elsewhere``)?"""
        try:
            idle = await conn.scalar(_HOLDER_IDLE, {"k": _LEASE_KEY})
        except (SQLAlchemyError, OSError) as exc:
            self.outage.failed(classify(exc).reason)
            return
        # gone between the try and the look (None): the next try takes it
        hung = idle is not None and float(idle) > STALE_TRIES * self.retry_s
        self._saw(Elsewhere.HUNG if hung else Elsewhere.LIVE)

    def _saw(self, found: Elsewhere) -> None:
        self._found, self._found_at = found, self.clock()
        if found is Elsewhere.LIVE:
            self.another_delivers.set()

    @property
    def database_down(self) -> bool:
        """This process's last try at the lease could not reach the database."""
        return self.outage.down

    @property
    def elsewhere(self) -> Elsewhere:
        """While this process does not hold the lease: whether another delivers, as last
        found within ``FRESH_TRIES`` tries (older: ``UNKNOWN``)."""
        at = self._found_at
        if at is None or self.clock() - at > FRESH_TRIES * self.retry_s:
            return Elsewhere.UNKNOWN
        return self._found

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
                except BlockingIOError:  # held by a process on this machine (gone: unlocked)
                    self._saw(Elsewhere.LIVE)
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
        self.another_delivers.clear()
        logger.info("this registry process now delivers (webhooks, platform topics, case clock)")
