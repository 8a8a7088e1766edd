"""Outage or refusal: how the registry store judges a database error (``device_registry/db/
faults.py``), as a table over SQLSTATEs and exception types, then on the real databases: a
PostgreSQL that is shutting down (57P03) or ended our session (57P01) is an outage to retry,
never "a bug or bad data"; a duplicate key or a number out of range is a refusal. And the one
outage logger (``gridwatch/ground/outage.py``): one line when it starts, one when it ends."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, NoResultFound
from sqlalchemy.exc import TimeoutError as PoolTimeout

from device_registry import RegistryStore, StoreUnavailable
from device_registry.db.engine import make_engine
from device_registry.db.faults import Fault, classify, is_outage_state
from device_registry.errors import StoreRejected
from gridwatch.ground.outage import Outage
from tests.services import Postgres

OUTAGE, REFUSAL = Fault.OUTAGE, Fault.REFUSAL


@pytest.mark.parametrize(
    ("state", "outage"),
    [
        ("57P01", True),  # admin shutdown: a fast stop or restart ended the session
        ("57P02", True),  # crash shutdown: another backend crashed
        ("57P03", True),  # cannot connect now: starting up or shutting down
        ("57014", True),  # a statement cancelled (statement_timeout, an operator)
        ("08000", True),  # connection exception
        ("08003", True),  # connection does not exist
        ("08006", True),  # connection failure
        ("53300", True),  # too many connections
        ("53100", True),  # disk full
        ("58030", True),  # I/O error
        ("40001", True),  # serialization failure
        ("40P01", True),  # deadlock detected
        ("55P03", True),  # lock not available
        ("25006", True),  # read-only transaction: a standby after a failover
        ("28P01", True),  # password refused: an operator puts it right, not the data
        ("23505", False),  # unique violation
        ("23503", False),  # foreign key violation
        ("23502", False),  # not null violation
        ("22003", False),  # numeric value out of range
        ("22P02", False),  # invalid text representation
        ("42P01", False),  # undefined table: our bug
        ("42703", False),  # undefined column
        ("P0001", False),  # a trigger's RAISE EXCEPTION
        ("40002", False),  # integrity violation found at commit: the data, again
        ("XX000", False),  # internal error
    ],
)
def test_sqlstates_that_are_an_outage(state: str, outage: bool) -> None:
    assert is_outage_state(state) is outage
    assert classify(_pg_error(state, "words")).fault is (OUTAGE if outage else REFUSAL)


class _Adapted(Exception):
    """What SQLAlchemy's asyncpg adapter raises: the driver's error as its cause, its SQLSTATE
    as an attribute."""

    def __init__(self, message: str, sqlstate: str | None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


def _pg_error(state: str | None, message: str, cause: BaseException | None = None) -> DBAPIError:
    orig = _Adapted(message, state)
    orig.__cause__ = cause
    return DBAPIError("SELECT 1\nFROM t", {}, orig)


def _sqlite_error(code: int, name: str, message: str) -> DBAPIError:
    orig = sqlite3.OperationalError(message)
    orig.sqlite_errorcode, orig.sqlite_errorname = code, name  # as sqlite3 sets them
    return DBAPIError("INSERT", {}, orig)


EXCEPTIONS: list[tuple[BaseException, Fault]] = [
    (ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)"), OUTAGE),
    (ConnectionResetError(104, "reset by peer"), OUTAGE),
    (TimeoutError(), OUTAGE),
    (PoolTimeout("QueuePool limit of size 5 overflow 5 reached"), OUTAGE),
    # asyncpg's own: a closed connection (no SQLSTATE) is an outage, a value it cannot
    # send (its DataError, an InterfaceError too) is the data
    (
        _pg_error(
            None,
            "connection is closed",
            asyncpg.exceptions.InterfaceError("connection is closed"),
        ),
        OUTAGE,
    ),
    (
        _pg_error(
            None,
            "invalid input for query argument $1",
            asyncpg.exceptions.DataError("invalid input for query argument $1"),
        ),
        REFUSAL,
    ),
    (
        _pg_error(
            "57P03",
            "the database system is shutting down",
            asyncpg.exceptions.CannotConnectNowError("the database system is shutting down"),
        ),
        OUTAGE,
    ),
    (_sqlite_error(5, "SQLITE_BUSY", "database is locked"), OUTAGE),
    (_sqlite_error(261, "SQLITE_BUSY_RECOVERY", "database is locked"), OUTAGE),
    (_sqlite_error(10, "SQLITE_IOERR", "disk I/O error"), OUTAGE),
    (_sqlite_error(13, "SQLITE_FULL", "database or disk is full"), OUTAGE),
    (_sqlite_error(8, "SQLITE_READONLY", "attempt to write a readonly database"), OUTAGE),
    (_sqlite_error(1, "SQLITE_ERROR", "no such table: devices"), REFUSAL),
    (_sqlite_error(2067, "SQLITE_CONSTRAINT_UNIQUE", "UNIQUE constraint failed"), REFUSAL),
    (_sqlite_error(1811, "SQLITE_CONSTRAINT_TRIGGER", "refused point"), REFUSAL),
    (OverflowError("Python int too large to convert to SQLite INTEGER"), REFUSAL),
    (NoResultFound("No row was found when one was required"), REFUSAL),
]  # fmt: skip
"""What the drivers and SQLAlchemy raise, and what each is."""


@pytest.mark.parametrize(
    ("exc", "fault"),
    EXCEPTIONS,
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_exception_types_that_are_an_outage(exc: BaseException, fault: Fault) -> None:
    assert classify(exc).fault is fault


def test_the_verdict_says_the_databases_words_and_code_on_one_line() -> None:
    shutting = asyncpg.exceptions.CannotConnectNowError("the database system is shutting down")
    reason = classify(_pg_error("57P03", str(shutting), shutting)).reason
    # not SQLAlchemy's wrapping: no statement, no "Background on this error" link, no newline
    assert reason == "CannotConnectNowError: the database system is shutting down (SQLSTATE 57P03)"


# ---- on the real databases ------------------------------------------------------------------


async def test_a_postgresql_shutting_down_is_an_outage_not_a_refusal(
    own_postgres: Postgres,
) -> None:
    pg = own_postgres
    url = pg.create_database("faults")
    store = await RegistryStore.open(url)
    other = await RegistryStore.open(url)
    try:
        # a fast stop (or an operator) ends the session under a running transaction: asyncpg
        # says so as 57P01, 08003 or a protocol error, depending on when it reads the FATAL
        with pytest.raises(StoreUnavailable) as ended:
            async with store.transaction() as s:
                pid = await s.scalar(text("SELECT pg_backend_pid()"))
                async with other.transaction() as o:
                    assert await o.scalar(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
                await s.execute(text("SELECT 1"))
        assert "\n" not in str(ended.value)
        # 57P03: a smart shutdown waits for the open sessions and refuses new ones
        async with other.transaction() as o:
            await o.execute(text("SELECT 1"))
        held = await other.engine.connect()  # keeps the shutdown waiting
        await asyncio.to_thread(pg.stop, "smart", False)
        refused = await _refused_while_shutting_down(url)
        assert "57P03" in refused and "shutting down" in refused, refused
        await held.close()
    finally:
        await store.close()
        await other.close()


async def _refused_while_shutting_down(url: str, within_s: float = 10) -> str:
    """What a new session is told once the postmaster has taken the shutdown signal (pg_ctl
    returns before it has): polled, with a deadline."""
    deadline = asyncio.get_running_loop().time() + within_s
    while True:
        late = RegistryStore(make_engine(url))  # a new session each time; no migration run
        try:
            await late.seen({"m-1"})
        except StoreUnavailable as exc:
            return str(exc)
        finally:
            await late.close()
        assert asyncio.get_running_loop().time() < deadline, "new sessions still taken"
        await asyncio.sleep(0.05)  # polling a condition, with a deadline


async def test_bad_data_is_still_a_refusal_on_postgresql(pg_url: str) -> None:
    store = await RegistryStore.open(pg_url)
    try:
        async with store.transaction() as s:
            await s.execute(text("CREATE TABLE t (id int PRIMARY KEY, small smallint)"))
            await s.execute(text("INSERT INTO t VALUES (1, 1)"))
        with pytest.raises(StoreRejected, match="23505"):
            async with store.transaction() as s:
                await s.execute(text("INSERT INTO t VALUES (1, 2)"))
        with pytest.raises(StoreRejected, match="22003"):
            async with store.transaction() as s:
                await s.execute(text("INSERT INTO t VALUES (2, 99999)"))
    finally:
        await store.close()


async def test_a_locked_sqlite_is_an_outage_and_a_missing_table_a_refusal(tmp_path: Path) -> None:
    db = tmp_path / "registry.db"
    store = await RegistryStore.open(f"sqlite+aiosqlite:///{db}")
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable, match="SQLITE_BUSY"):
            async with store.transaction() as s:
                await s.execute(text("PRAGMA busy_timeout = 50"))  # not the 30 s of production
                await s.execute(text("CREATE TABLE wants_the_lock (x int)"))  # WAL: a write
        holder.execute("ROLLBACK")
        with pytest.raises(StoreRejected, match="no such table"):
            async with store.transaction() as s:
                await s.execute(text("SELECT * FROM no_such_table"))
    finally:
        holder.close()
        await store.close()


# ---- the outage logger ----------------------------------------------------------------------


def test_an_outage_is_one_error_line_then_one_info_line_with_its_length(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="test.outage")
    now = [100.0]
    outage = Outage(logging.getLogger("test.outage"), "webhook delivery", "registry database",
                    "deliveries wait", clock=lambda: now[0])  # fmt: skip
    outage.ok()  # up: says nothing
    for _ in range(20):  # a poll a second for 20 s, each failing with a many-line message
        outage.failed(StoreUnavailable("postgresql database unavailable:\n[SQL: SELECT 1]\n"))
        now[0] += 1.0
    assert outage.down
    outage.ok()
    outage.ok()
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert said[0] == ("ERROR", "webhook delivery: registry database unavailable, deliveries "
                       "wait: postgresql database unavailable: [SQL: SELECT 1]")  # fmt: skip
    assert [level for level, _ in said[1:-1]] == ["DEBUG"] * 19
    assert said[-1] == ("INFO", "webhook delivery: registry database is back after 20.0 s (20 "
                        "failed attempts)")  # fmt: skip
    assert not any(r.exc_info for r in caplog.records)
    assert not outage.down


def test_a_bug_in_a_loop_carries_its_traceback_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="test.outage")
    outage = Outage(logging.getLogger("test.outage"), "escalation clock", "registry database")
    for _ in range(3):
        with outage.guard(StoreUnavailable):
            raise KeyError("a bug")
    with outage.guard(StoreUnavailable):
        pass
    with outage.guard(StoreUnavailable):
        raise StoreUnavailable("gone")
    with outage.guard(StoreUnavailable):  # a bug met during a plain outage is told, once
        raise KeyError("a bug")
    with outage.guard(StoreUnavailable):
        raise KeyError("a bug")
    levels = [(r.levelname, r.exc_info is not None) for r in caplog.records]
    assert levels == [("ERROR", True), ("DEBUG", False), ("DEBUG", False), ("INFO", False),
                      ("ERROR", False), ("ERROR", True), ("DEBUG", False)]  # fmt: skip
    assert caplog.records[0].getMessage().startswith("escalation clock: registry database failed")
