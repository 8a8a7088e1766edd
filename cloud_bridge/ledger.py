"""The bridge's durable record of the alert transitions it published on the platform topics.

The platform topics carry each transition once: before the bridge publishes a platform alert it
asks this ledger whether that transition (``core.transition_key``) went out already, from the
normal step or from the relay that does not wait for the registry (``relay.py``), in this run or
an earlier one; after the broker's PUBACK it records it. One SQLite file per bridge in its data
dir (``published-<bridge id>.db``), WAL with ``synchronous=FULL``: a record is on disk (fsync)
before ``record`` returns, so a bridge killed after that does not publish it again when the broker
redelivers the message. Killed between the PUBACK and the fsync (a millisecond or so), it does:
an alert is never held back for its record (at-least-once, as everywhere else).

Kept for ``seen_retention_s`` (the registry's dedupe window): while the registry is out, the
ledger is the only word on which transitions went out, a gateway's resend of an old one included.

A ledger that fails (disk full, a broken file) never stops an alert: the bridge logs it and
publishes without it (a transition may then go out twice).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from pathlib import Path

import aiosqlite

from cloud_bridge.errors import LocalStoreError
from cloud_bridge.localdb import local_path, open_local

_SCHEMA = """
CREATE TABLE IF NOT EXISTS published (
    transition TEXT PRIMARY KEY, at INTEGER NOT NULL
) WITHOUT ROWID, STRICT;
CREATE INDEX IF NOT EXISTS published_at ON published (at);
"""
_CHUNK = 500  # ids per query: below SQLite's bound on host parameters


def ledger_path(data_dir: Path, bridge_id: str) -> Path:
    """One file per bridge: two bridges sharing a data dir keep their own."""
    return local_path(data_dir, "published", bridge_id)


class PublishLedger:
    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self._conn = conn
        self.path = path

    @classmethod
    async def open(cls, path: Path) -> PublishLedger:
        return cls(await open_local(path, _SCHEMA, "publish ledger"), path)

    async def published(self, transitions: Collection[str]) -> set[str]:
        """The subset of ``transitions`` published already."""
        ordered, found = list(transitions), set[str]()
        try:
            for i in range(0, len(ordered), _CHUNK):
                chunk = ordered[i : i + _CHUNK]
                marks = ",".join("?" * len(chunk))
                async with self._conn.execute(
                    f"SELECT transition FROM published WHERE transition IN ({marks})", chunk
                ) as rows:
                    found.update(str(r[0]) for r in await rows.fetchall())
        except sqlite3.Error as exc:
            raise LocalStoreError(self.path, f"publish ledger: cannot read: {exc}") from exc
        return found

    async def record(self, transitions: Collection[str], at: int) -> None:
        """Published (the broker has them): on disk when this returns."""
        if not transitions:
            return
        try:
            await self._conn.executemany(
                "INSERT OR IGNORE INTO published VALUES (?, ?)", [(t, at) for t in transitions]
            )
            await self._conn.commit()
        except sqlite3.Error as exc:
            raise LocalStoreError(self.path, f"publish ledger: cannot write: {exc}") from exc

    async def prune(self, before: int) -> int:
        """Forget what was published before ``before`` (epoch ms); how many."""
        try:
            cur = await self._conn.execute("DELETE FROM published WHERE at < ?", (before,))
            await self._conn.commit()
        except sqlite3.Error as exc:
            raise LocalStoreError(self.path, f"publish ledger: cannot prune: {exc}") from exc
        return cur.rowcount

    async def close(self) -> None:
        await self._conn.close()


__all__ = ["PublishLedger", "ledger_path"]
