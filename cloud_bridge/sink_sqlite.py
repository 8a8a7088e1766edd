"""TelemetrySink into a local SQLite file: recent history for the demo, with no server.

Writes are idempotent (primary key device point + timestamp, INSERT OR IGNORE), so a
redelivered batch is not stored twice even when the bridge crashed before recording its id.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from cloud_bridge.errors import SinkError
from gridwatch.ground.contract import TelemetryBatch, Value

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    gateway TEXT NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL, ts INTEGER NOT NULL,
    value ANY, quality TEXT NOT NULL, historical INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (gateway, device, point, ts)
) WITHOUT ROWID, STRICT;
CREATE INDEX IF NOT EXISTS samples_ts ON samples (ts);
"""
_INSERT = "INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?)"
Row = tuple[str, str, str, int, Value, str, int]


class SqliteSink:
    name = "sqlite"

    def __init__(self, conn: aiosqlite.Connection, path: Path, retention_ms: int) -> None:
        self._conn = conn
        self.path = path
        self.retention_ms = retention_ms

    @classmethod
    async def open(cls, path: Path, retention_hours: float = 48) -> SqliteSink:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = await aiosqlite.connect(path)
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute("PRAGMA synchronous=NORMAL")
            await conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise SinkError(cls.name, f"cannot open {path}: {exc}") from exc
        return cls(conn, path, int(retention_hours * 3_600_000))

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise SinkError(self.name, f"{self.path}: {exc}") from exc

    async def write(self, batches: Sequence[TelemetryBatch]) -> tuple[int, int]:
        rows: list[Row] = [
            (b.gateway, r.device, r.point, r.ts, r.value, r.quality.value, int(r.historical))
            for b in batches
            for r in b.readings
        ]
        if rows:
            async with self._errors():
                await self._conn.executemany(_INSERT, rows)
                await self._conn.commit()
        return len(rows), 0

    async def history(
        self, gateway: str, device: str, point: str, since: int = 0
    ) -> list[tuple[int, Value, str]]:
        """(ts, value, quality) of one point from ``since`` (epoch ms) on, oldest first."""
        q = ("SELECT ts, value, quality FROM samples WHERE gateway=? AND device=? AND point=?"
             " AND ts >= ? ORDER BY ts")  # fmt: skip
        async with self._errors(), self._conn.execute(q, (gateway, device, point, since)) as cur:
            return [(ts, value, quality) for ts, value, quality in await cur.fetchall()]

    async def maintain(self, now: int) -> None:
        async with self._errors():
            await self._conn.execute("DELETE FROM samples WHERE ts < ?", (now - self.retention_ms,))
            await self._conn.commit()

    async def close(self) -> None:
        await self._conn.close()
