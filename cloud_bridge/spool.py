"""The events lane's durable spool: messages taken from the broker while the registry is out.

While a step waits for the registry, the messages behind it would stay unacknowledged in the
broker, and the broker sends a session no more than its Receive Maximum of those (1000; 20 from
an MQTT 3.1.1 broker): after that many health reports, a new alert would wait in the broker too.
So while the events lane is stalled, what it receives goes into this spool (fsync'd), is
acknowledged to the broker, relayed (its alerts published), and ingested through the normal
step, in order, once the registry answers; a row is deleted when its step has committed (and the
gateway's ``Ack`` then names it). A bridge that dies keeps its spool and ingests it when it runs
again, before anything newer. One SQLite file per bridge in its data dir, WAL with
``synchronous=FULL``.

The spool holds at most ``SPOOL_MAX`` messages: past that the lane stops receiving and the
broker keeps the rest, as without a spool.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from cloud_bridge.errors import LocalStoreError
from cloud_bridge.localdb import local_path, open_local
from cloud_bridge.mqtt import Inbound

SPOOL_MAX = 200_000
"""Messages held at most: a few hundred MB of health reports and alerts (about 1 KiB each)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS held (
    row INTEGER PRIMARY KEY AUTOINCREMENT, lane TEXT NOT NULL, topic TEXT NOT NULL,
    payload BLOB NOT NULL
) STRICT;
"""


@dataclass(frozen=True, slots=True)
class Spooled(Inbound):
    """A message read back from the spool: ``row`` is its key there; ``mid`` and ``qos`` are 0
    (the broker was acknowledged when it was held)."""

    row: int


def spool_path(data_dir: Path, bridge_id: str) -> Path:
    return local_path(data_dir, "spool", bridge_id)


class Spool:
    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> Spool:
        return cls(await open_local(path, _SCHEMA, "spool"), path)

    async def hold(self, lane: str, batch: Sequence[Inbound]) -> int:
        """On disk when this returns; the last row written."""
        try:
            cur = await self._conn.executemany(
                "INSERT INTO held (lane, topic, payload) VALUES (?, ?, ?)",
                [(lane, m.topic, m.payload) for m in batch],
            )
            await cur.close()
            async with self._conn.execute("SELECT max(row) FROM held WHERE lane = ?", (lane,)) as c:
                (last,) = await c.fetchone() or (0,)
            await self._conn.commit()
        except sqlite3.Error as exc:
            raise LocalStoreError(self.path, f"spool: cannot write: {exc}") from exc
        return int(last or 0)

    async def after(self, lane: str, row: int, limit: int) -> list[Spooled]:
        """Held messages of ``lane`` after ``row``, oldest first."""
        try:
            async with self._conn.execute(
                "SELECT row, topic, payload FROM held WHERE lane = ? AND row > ? ORDER BY row "
                "LIMIT ?", (lane, row, limit),
            ) as rows:  # fmt: skip
                return [
                    Spooled(str(t), bytes(p), 0, 0, int(r)) for r, t, p in await rows.fetchall()
                ]
        except sqlite3.Error as exc:
            raise LocalStoreError(self.path, f"spool: cannot read: {exc}") from exc

    async def last(self, lane: str) -> int:
        """The last row held for ``lane`` (0: none)."""
        try:
            async with self._conn.execute("SELECT max(row) FROM held WHERE lane = ?", (lane,)) as c:
                (last,) = await c.fetchone() or (0,)
        except sqlite3.Error as exc:
            raise LocalStoreError(self.path, f"spool: cannot read: {exc}") from exc
        return int(last or 0)

    async def forget(self, rows: Sequence[int]) -> None:
        """Committed to the registry: no longer held."""
        if not rows:
            return
        try:
            await self._conn.executemany("DELETE FROM held WHERE row = ?", [(r,) for r in rows])
            await self._conn.commit()
        except sqlite3.Error as exc:
            raise LocalStoreError(self.path, f"spool: cannot delete: {exc}") from exc

    async def close(self) -> None:
        await self._conn.close()


__all__ = ["SPOOL_MAX", "Spool", "Spooled", "spool_path"]
