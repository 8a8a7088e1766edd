"""TelemetrySink into a local SQLite file: recent history for the demo, with no server.

Writes are idempotent (primary key device point + timestamp, INSERT OR IGNORE), so a
redelivered batch is not stored twice even when the bridge crashed before recording its id.

Each row carries the labels VictoriaMetrics gets (``labels.LABELS``: district, street, grid,
unit; "" where there is none) as columns of their own, so the same questions can be asked in SQL
(docs/analytics.md). A file written before they existed gets them when it is opened, "" in its
old rows: the history of those rows is still found by gateway, device and point.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from cloud_bridge.errors import SinkError
from cloud_bridge.labels import LABELS, NO_FACTS, series_labels
from device_registry.ingest.changes import DeviceFacts
from gridwatch.ground.contract import TelemetryBatch, Value

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    gateway TEXT NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL, ts INTEGER NOT NULL,
    value ANY, quality TEXT NOT NULL, historical INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (gateway, device, point, ts)
) WITHOUT ROWID, STRICT;
CREATE INDEX IF NOT EXISTS samples_ts ON samples (ts);
"""
_COLUMNS = ("gateway", "device", "point", "ts", "value", "quality", "historical", *LABELS)
_INSERT = (f"INSERT OR IGNORE INTO samples ({', '.join(_COLUMNS)}) "
           f"VALUES ({', '.join('?' for _ in _COLUMNS)})")  # fmt: skip
Row = tuple[str | int | Value, ...]


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
            await _add_label_columns(conn)
        except sqlite3.Error as exc:
            raise SinkError(cls.name, f"cannot open {path}: {exc}") from exc
        return cls(conn, path, int(retention_hours * 3_600_000))

    @asynccontextmanager
    async def _errors(self) -> AsyncIterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise SinkError(self.name, f"{self.path}: {exc}") from exc

    async def write(
        self, batches: Sequence[TelemetryBatch], facts: DeviceFacts = NO_FACTS
    ) -> tuple[int, int]:
        rows: list[Row] = [
            (b.gateway, r.device, r.point, r.ts, r.value, r.quality.value, int(r.historical),
             *series_labels(facts, b.gateway, r))
            for b in batches
            for r in b.readings
        ]  # fmt: skip
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


async def _add_label_columns(conn: aiosqlite.Connection) -> None:
    """Give a file written before a label existed its column ("" in the old rows). In one
    write transaction: a second process opening the same file waits, then finds them there."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        async with conn.execute("SELECT name FROM pragma_table_info('samples')") as cur:
            have = {name for (name,) in await cur.fetchall()}
        for name in LABELS:
            if name not in have:
                await conn.execute(
                    f"ALTER TABLE samples ADD COLUMN {name} TEXT NOT NULL DEFAULT ''"
                )
        await conn.commit()
    except BaseException:
        await conn.rollback()
        raise
