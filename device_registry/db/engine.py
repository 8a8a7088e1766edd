"""Engine creation: SQLite (aiosqlite, WAL) by default, PostgreSQL (asyncpg) from a URL."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from sqlalchemy import Table, event
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine


def default_url(data_dir: str | Path) -> str:
    path = Path(data_dir) / "registry.db"
    return f"sqlite+aiosqlite:///{path}"


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        _make_parent(url)
        engine = create_async_engine(url, connect_args={"timeout": 30})
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
        return engine
    return create_async_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # WAL lets the API read while the bridge writes; NORMAL sync is durable across crashes of
    # the process (not of the OS), which the at-least-once redelivery covers.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _make_parent(url: str) -> None:
    _, _, path = url.partition(":///")
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)


def upsert(dialect: str, model: type[Any]) -> Any:
    """``INSERT`` for ``model`` in the dialect's construct, whose ``on_conflict_do_nothing`` and
    ``on_conflict_do_update`` SQLite and PostgreSQL share. On the Table, not the mapped class, so
    that many rows go through Core's executemany, not the ORM's per-row bulk path (3x faster for
    the last values)."""
    table = cast(Table, model.__table__)
    return pg_insert(table) if dialect == "postgresql" else sqlite_insert(table)
