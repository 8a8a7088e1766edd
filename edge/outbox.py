"""The durable outbox between the rules and the uplink (SQLite in WAL mode).

A message leaves only when the broker has acknowledged it. The outbox is bounded in bytes: when a
new message does not fit, the oldest telemetry goes first (counted); alerts are never dropped, even
past the bound. Alerts are taken ahead of any telemetry backlog; within a priority, in order.

The same file keeps what must survive a restart with the messages, in the same transactions:
per-stream sequence numbers, the session counter, and the edge's active alerts.

Readings are durable from the poll that took them: each poll is appended to the outbox's poll
journal (``edge.journal``) at once, and the transaction that queues the telemetry batch carrying
it also records how far the batches reach. A gateway killed between the two finds the poll in
the journal at its next start. The journal is not counted against the byte bound: it holds at
most one batch linger's worth of polls.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge.journal import PollJournal, Staged
from gridwatch.ground.contract import Value

logger = logging.getLogger(__name__)

PRIO_ALERT = 0
PRIO_TELEMETRY = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prio INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_prio_id ON outbox (prio, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS active_alerts (
    device TEXT NOT NULL,
    rule TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    raised_at INTEGER NOT NULL,
    peak TEXT NOT NULL,
    PRIMARY KEY (device, rule)
);
"""


@dataclass(frozen=True, slots=True)
class Queued:
    id: int
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    device: str
    rule: str
    alert_id: str
    raised_at: int
    peak: Value


class OutboxBusy(Exception):
    """The outbox file is held by another process."""


class Outbox:
    def __init__(self, path: str | Path, max_bytes: int) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fresh = not Path(path).exists()
        self.max_bytes = max_bytes
        self.db = sqlite3.connect(
            str(path), isolation_level=None, check_same_thread=False, timeout=0.5
        )
        # One agent per outbox: the file stays locked while it runs, so a second agent started
        # on it by mistake is refused instead of sending the same messages twice. It also spares
        # every per-poll commit the shared-memory locking, a third of its cost.
        self.db.execute("PRAGMA locking_mode=EXCLUSIVE")
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError as exc:
            self.db.close()
            raise OutboxBusy(f"{path}: {exc}: is another edge agent running on it?") from exc
        # NORMAL in WAL survives kill -9 with every commit; alert commits are made FULL below
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        row = self.db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self.depth, self.bytes = int(row[0]), int(row[1])
        self.dropped = self.meta("dropped_telemetry")
        self.notify: Callable[[], None] | None = None  # the uplink's wake-up
        journal = Path(f"{path}-polls")
        if fresh and journal.exists() and journal.stat().st_size:
            # a new outbox beside an old journal (the outbox was deleted): its records cannot be
            # told apart from what was already sent, so they are not sent again
            logger.warning("%s: new outbox, so the old poll journal %s is discarded", path, journal)
            journal.unlink()
        self.journal = PollJournal(journal, self.meta("batched_through"))

    def close(self) -> None:
        self.journal.close()
        self.db.close()

    # --- counters kept with the data -------------------------------------------------------
    def meta(self, key: str) -> int:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _set_meta(self, key: str, value: int) -> None:
        self.db.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def next_session(self) -> int:
        with self._txn():
            session = self.meta("session") + 1
            self._set_meta("session", session)
        return session

    def next_seq(self, stream: str) -> int:
        """Reserve the next sequence number of a stream; call inside the enqueueing transaction."""
        seq = self.meta(f"seq:{stream}") + 1
        self._set_meta(f"seq:{stream}", seq)
        return seq

    # --- writing ---------------------------------------------------------------------------
    def _txn(self, on_rollback: Callable[[], None] | None = None) -> _Txn:
        return _Txn(self.db, on_rollback)

    def _recount(self) -> None:
        """After a rollback: the counters a failed transaction moved, as the file has them."""
        row = self.db.execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox").fetchone()
        self.depth, self.bytes = int(row[0]), int(row[1])
        self.dropped = self.meta("dropped_telemetry")

    def stage(self, payload: bytes, readings: int) -> Staged:
        """Make one poll's readings durable now; they leave with the batch that carries them."""
        return self.journal.append(payload, readings)

    def take_staged(self) -> list[Staged]:
        """Polls a previous run staged but never batched (it was killed), oldest first; handed
        out once, to the pipeline that will batch them."""
        polls, self.journal.recovered = self.journal.recovered, []
        return polls

    def enqueue(
        self,
        prio: int,
        stream: str,
        topic: str,
        build: Callable[[int], bytes],
        alert: ActiveAlert | None = None,
        cleared: tuple[str, str] | None = None,
        unstage_through: int = 0,
    ) -> None:
        """Queue the message ``build(seq)`` with the stream's next sequence number.

        With ``alert`` or ``cleared`` the edge's active-alert table changes in the same
        transaction, made FULL-synchronous: an alert and its state are never out of step.
        ``unstage_through`` releases the staged polls the message carries, also in that
        transaction.
        """
        if prio == PRIO_ALERT:
            self.db.execute("PRAGMA synchronous=FULL")
        try:
            with self._txn(on_rollback=self._recount):
                self._insert(prio, topic, build(self.next_seq(stream)))
                if unstage_through:
                    self._set_meta("batched_through", unstage_through)
                if alert is not None:
                    self.db.execute(
                        "INSERT OR REPLACE INTO active_alerts VALUES (?, ?, ?, ?, ?)",
                        (alert.device, alert.rule, alert.alert_id, alert.raised_at,
                         json.dumps(alert.peak)),
                    )  # fmt: skip
                if cleared is not None:
                    self.db.execute(
                        "DELETE FROM active_alerts WHERE device = ? AND rule = ?", cleared
                    )
        finally:
            if prio == PRIO_ALERT:
                self.db.execute("PRAGMA synchronous=NORMAL")
        if unstage_through and unstage_through == self.journal.seq:
            try:
                self.journal.clear()  # every staged poll is in a committed batch
            except OSError as exc:  # harmless: its records are at or below batched_through
                logger.warning("poll journal not truncated: %s", exc)
        if self.notify is not None:
            self.notify()

    def _insert(self, prio: int, topic: str, payload: bytes) -> None:
        size = len(payload) + len(topic)
        if prio != PRIO_ALERT:
            self._make_room(size)
        self.db.execute(
            "INSERT INTO outbox (prio, topic, payload, size) VALUES (?, ?, ?, ?)",
            (prio, topic, payload, size),
        )
        self.depth += 1
        self.bytes += size

    def _make_room(self, size: int) -> None:
        while self.bytes + size > self.max_bytes:
            row = self.db.execute(
                "SELECT id, size FROM outbox WHERE prio != ? ORDER BY id LIMIT 1", (PRIO_ALERT,)
            ).fetchone()
            if row is None:
                return  # only alerts left: they are kept past the bound
            self.db.execute("DELETE FROM outbox WHERE id = ?", (row[0],))
            self.depth -= 1
            self.bytes -= int(row[1])
            self.dropped += 1
            self._set_meta("dropped_telemetry", self.dropped)
            if self.dropped == 1 or self.dropped % 1000 == 0:
                logger.warning("outbox full: dropped %d telemetry messages so far", self.dropped)

    def active_alerts(self) -> list[ActiveAlert]:
        rows = self.db.execute("SELECT device, rule, alert_id, raised_at, peak FROM active_alerts")
        return [ActiveAlert(d, r, a, int(t), json.loads(p)) for d, r, a, t, p in rows]

    # --- reading and acknowledging ---------------------------------------------------------
    def peek(self, limit: int, after: tuple[int, int] = (-1, 0)) -> list[Queued]:
        """The next messages in send order (alerts first), after the (prio, id) given."""
        rows = self.db.execute(
            "SELECT id, topic, payload, prio FROM outbox WHERE (prio, id) > (?, ?) "
            "ORDER BY prio, id LIMIT ?",
            (*after, limit),
        ).fetchall()
        return [Queued(int(i), t, bytes(p)) for i, t, p, _ in rows]

    def ack(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._txn():
            marks = ",".join("?" * len(ids))
            row = self.db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE id IN ({marks})", ids
            ).fetchone()
            self.db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids)
        self.depth -= int(row[0])
        self.bytes -= int(row[1])


class _Txn:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on error (autocommit connection); a failed
    COMMIT is rolled back too, and ``on_rollback`` then restores what the code had counted."""

    def __init__(self, db: sqlite3.Connection, on_rollback: Callable[[], None] | None) -> None:
        self.db = db
        self.on_rollback = on_rollback

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error:
                self._rollback()
                raise
        self._rollback()

    def _rollback(self) -> None:
        if self.db.in_transaction:
            self.db.execute("ROLLBACK")
        if self.on_rollback is not None:
            self.on_rollback()
