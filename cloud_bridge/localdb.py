"""The bridge's own small SQLite files (the publish ledger, the events spool): one way to name
and open them, WAL with ``synchronous=FULL`` (a commit is on disk, fsync'd, when it returns)."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import aiosqlite

from cloud_bridge.errors import LocalStoreError


def local_path(data_dir: Path, kind: str, bridge_id: str) -> Path:
    """One file per bridge and kind: two bridges sharing a data dir keep their own."""
    return data_dir / f"{kind}-{re.sub(r'[^A-Za-z0-9._-]', '_', bridge_id)}.db"


async def open_local(path: Path, schema: str, what: str) -> aiosqlite.Connection:
    """Open (or create) ``path`` with ``schema``; ``what`` names the file in an error."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = await aiosqlite.connect(path, timeout=5)
    except (OSError, sqlite3.Error) as exc:
        raise LocalStoreError(path, f"{what}: cannot open: {exc}") from exc
    try:
        await conn.execute("PRAGMA journal_mode=WAL")
        await conn.execute("PRAGMA synchronous=FULL")  # fsync'd at every commit
        await conn.executescript(schema)
        await conn.commit()
    except sqlite3.Error as exc:
        await conn.close()
        raise LocalStoreError(path, f"{what}: cannot open: {exc}") from exc
    return conn
