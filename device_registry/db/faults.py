"""Which database failures are an outage (retry later) and which a refusal (this statement, with
this data, will never be taken): decided from the SQLSTATE (PostgreSQL) or the result code
(SQLite) and the exception's type, never from its text.

    outage    no answer at all: ``OSError`` (refused, reset), ``TimeoutError``, the pool's
              timeout, a connection the driver or SQLAlchemy calls lost or closed;
              PostgreSQL classes 08 (connection exception), 53 (insufficient resources),
              57 (operator intervention: 57P01 admin shutdown, 57P02 crash shutdown, 57P03
              "the database system is starting up / shutting down", 57014 a cancelled
              statement), 58 (I/O error); 40001 serialization failure, 40P01 deadlock, 40003
              statement completion unknown, 55P03 lock not available, 25006 read-only
              transaction (a standby after a failover), 28 (authorization: a changed password
              is put right by an operator, not by the data);
              SQLite BUSY, LOCKED, NOMEM, READONLY (a disk remounted read-only), IOERR, CORRUPT,
              FULL, CANTOPEN, PROTOCOL
    refusal   whatever else the database answered: 22 (data exception), 23 (integrity
              constraint violation), 42 (syntax or access rule: our bug), a trigger's RAISE,
              SQLite CONSTRAINT, MISMATCH, TOOBIG, RANGE, ERROR (no such table: a bug, and a
              bridge that meets it on its quarantine too calls it an outage itself)

The bridge retries an outage with the messages unacknowledged, and bisects a refusal to
quarantine the messages the database will not take (``cloud_bridge/bridge.py``): a restart of
PostgreSQL called a refusal once sent good alerts to quarantine and the MQTT session through a
reconnect. ``classify`` is pure: it reads types and attributes only.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout


class Fault(enum.Enum):
    OUTAGE = "outage"
    REFUSAL = "refusal"


OUTAGE_CLASSES = frozenset({"08", "28", "53", "57", "58"})
"""PostgreSQL SQLSTATE classes (the first two characters) that are an outage."""
OUTAGE_STATES = frozenset({"40001", "40P01", "40003", "55P03", "25006"})
"""PostgreSQL SQLSTATEs of other classes that are an outage."""

SQLITE_OUTAGES = {
    5: "SQLITE_BUSY", 6: "SQLITE_LOCKED", 7: "SQLITE_NOMEM", 8: "SQLITE_READONLY", 10: "SQLITE_IOERR",
    11: "SQLITE_CORRUPT", 13: "SQLITE_FULL", 14: "SQLITE_CANTOPEN", 15: "SQLITE_PROTOCOL",
}  # fmt: skip
"""SQLite primary result codes (the low byte of an extended code) that are an outage."""


@dataclass(frozen=True)
class Verdict:
    fault: Fault
    reason: str
    """The database's own words on one line, with its code: what a log line and a 503 say."""


def classify(exc: BaseException) -> Verdict:
    """An error met talking to the database, judged (see the module docstring)."""
    if isinstance(exc, DBAPIError):
        return _driver_error(exc.orig, exc.connection_invalidated)
    if isinstance(exc, PoolTimeout | DisconnectionError | OSError | TimeoutError):
        return Verdict(Fault.OUTAGE, _words(exc))
    # SQLAlchemy's own (how we used it), a number sqlite3 cannot bind (OverflowError)
    return Verdict(Fault.REFUSAL, _words(exc))


def _driver_error(orig: BaseException | None, invalidated: bool) -> Verdict:
    """A DB-API error: asyncpg's (adapted by SQLAlchemy, its own error as the cause) carries a
    ``sqlstate``, sqlite3's a ``sqlite_errorcode``; a connection error of either carries none."""
    cause = orig.__cause__ if orig is not None and orig.__cause__ is not None else orig
    state = getattr(orig, "sqlstate", None) or getattr(cause, "sqlstate", None)
    words = _words(cause) if cause is not None else "no error text"
    if isinstance(state, str) and state:
        fault = Fault.OUTAGE if is_outage_state(state) or invalidated else Fault.REFUSAL
        return Verdict(fault, f"{words} (SQLSTATE {state})")
    code = getattr(orig, "sqlite_errorcode", None)
    if isinstance(code, int):
        name = getattr(orig, "sqlite_errorname", None) or f"code {code}"
        outage = code & 0xFF in SQLITE_OUTAGES or invalidated
        return Verdict(Fault.OUTAGE if outage else Fault.REFUSAL, f"{words} ({name})")
    if invalidated or _connection_error(cause):
        return Verdict(Fault.OUTAGE, words)
    return Verdict(Fault.REFUSAL, words)


def is_outage_state(state: str) -> bool:
    """A PostgreSQL SQLSTATE that says the database cannot do anything now, whatever is sent."""
    return state[:2] in OUTAGE_CLASSES or state in OUTAGE_STATES


def _connection_error(exc: BaseException | None) -> bool:
    """An error of the connection itself, with no SQLSTATE: asyncpg's bare ``InterfaceError``
    ("connection is closed"; not its subclasses, such as ``DataError`` for a value it cannot
    send), ``OSError`` and timeouts under it."""
    if exc is None:
        return False
    if isinstance(exc, OSError | TimeoutError):
        return True
    # by the driver's type, imported lazily: SQLite-only installs need not have asyncpg
    try:
        from asyncpg.exceptions import InterfaceError as PgInterfaceError  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - the central extra installs it
        return False
    return type(exc) is PgInterfaceError


def _words(exc: BaseException) -> str:
    """The error's own message (not SQLAlchemy's wrapping with the statement), on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


__all__ = ["Fault", "Verdict", "classify", "is_outage_state"]
