"""The durable outbox between the rules and the uplink (SQLite in WAL mode).

A message is forgotten only when the centre has committed it (``mqtt.ack: centre``): the
broker's PUBACK marks it *sent*, the centre's ``Ack`` (``gridwatch.ground.contract``) marks it
*acknowledged*. A PUBACK alone is a promise of one hop: a broker that crashes, or restarts
without persistence, or fails over, loses what it acknowledged before the centre had it.
Each row is in one of three states::

    queued --PUBACK--> sent --centre Ack--> acknowledged --(retention ends)--> deleted
       ^                 |                       |
       +-- reconnect, ---+                       |
       |   ack timeout                           |
       +------------ Repair (the centre lost it) +

Only the streams the centre acknowledges (telemetry, alerts, health) wait for it; the rest
(config acks, command results: the registry's downlink reads those, not the bridge) and every
message under ``mqtt.ack: broker`` are deleted at PUBACK, as before.

Acknowledged messages are kept for repair (the centre found a gap and asks for numbers again)
until ``keep_acked_s`` has passed or their bytes are needed under the bound, whichever comes
first. The bound counts every row: queued, sent and kept. When a new message does not fit,
acknowledged ones go first (they are delivered), then the oldest unacknowledged telemetry
(counted as dropped); alerts are never dropped, even past the bound. Alerts are taken ahead of
any telemetry backlog; within a priority, in order.

The same file keeps what must survive a restart with the messages, in the same transactions:
per-stream sequence numbers, the session counter, and the edge's active alerts. A sequence
number is unique within its stream for as long as the file lives: an Ack names messages by it.

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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from edge.journal import PollJournal, Staged
from gridwatch.ground.contract import Value

logger = logging.getLogger(__name__)

PRIO_ALERT = 0
PRIO_TELEMETRY = 1

QUEUED, SENT, ACKED = 0, 1, 2
"""A row's state: to send; the broker has it (PUBACK); the centre has committed it (Ack)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    prio INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_prio_id ON outbox (prio, id);
"""
# added with the centre's acknowledgement; an older file gets them at open (``_upgrade``)
_ACK_COLUMNS = {
    "stream": "TEXT",
    "seq": "INTEGER",
    "state": "INTEGER NOT NULL DEFAULT 0",
    "sent_at": "REAL",  # the last send: the ack timeout runs from it
    "first_sent": "REAL",  # the first send: how long the centre has kept the gateway waiting
    "acked_at": "REAL",  # the retention for repair runs from it
}
# The payload lives apart from the row that changes state: SQLite rewrites a whole row on
# UPDATE, overflow pages included, and marking a 20 KB batch sent and then acknowledged in
# place more than doubled the bytes written (measured: 219 MB -> 491 MB for 60 MB of batches).
# ``outbox.payload`` is then empty (a file written before holds its payloads there until
# ``_upgrade`` moves them).
_ACK_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox_body (id INTEGER PRIMARY KEY, payload BLOB NOT NULL);
CREATE TRIGGER IF NOT EXISTS outbox_body_gone AFTER DELETE ON outbox
BEGIN DELETE FROM outbox_body WHERE id = old.id; END;
CREATE INDEX IF NOT EXISTS outbox_state ON outbox (state, prio, id);
CREATE INDEX IF NOT EXISTS outbox_stream_seq ON outbox (stream, seq);
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
    stream: str = ""


@dataclass(frozen=True, slots=True)
class Waiting:
    """Messages the broker has and the centre has not acknowledged yet."""

    count: int
    oldest_s: float | None
    """Seconds since the oldest of them was first sent; None when there is none."""


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
    def __init__(self, path: str | Path, max_bytes: int, keep_acked_s: float = 600.0) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fresh = not Path(path).exists()
        self.max_bytes = max_bytes
        self.keep_acked_s = keep_acked_s
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
        self._upgrade()
        self.depth = self.bytes = self.kept = self.kept_bytes = 0
        self._recount()
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

    def _upgrade(self) -> None:
        """An outbox written before the centre acknowledged: the columns the states need, and
        its payloads moved apart; its rows are queued, their stream and number read from their
        payloads (contract JSON)."""
        have = {row[1] for row in self.db.execute("PRAGMA table_info(outbox)")}
        missing = [c for c in _ACK_COLUMNS if c not in have]
        if missing:
            with self._txn():
                for column in missing:
                    self.db.execute(
                        f"ALTER TABLE outbox ADD COLUMN {column} {_ACK_COLUMNS[column]}"
                    )
                self.db.execute(
                    "UPDATE outbox SET stream = json_extract(CAST(payload AS TEXT), '$.kind'), "
                    "seq = json_extract(CAST(payload AS TEXT), '$.seq') "
                    "WHERE json_valid(CAST(payload AS TEXT))"
                )
        self.db.executescript(_ACK_SCHEMA)
        # the payloads to their own table; at every open, so that a start killed half-way
        # through finishes here (``length`` of a blob reads no content)
        with self._txn():
            self.db.execute(
                "INSERT OR REPLACE INTO outbox_body (id, payload) "
                "SELECT id, payload FROM outbox WHERE length(payload) > 0"
            )
            self.db.execute("UPDATE outbox SET payload = x'' WHERE length(payload) > 0")

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
        """The counters as the file has them: at open, and after a rollback."""
        rows = self.db.execute(
            "SELECT state = ?, COUNT(*), COALESCE(SUM(size), 0) FROM outbox GROUP BY state = ?",
            (ACKED, ACKED),
        ).fetchall()
        counts = {bool(acked): (int(n), int(size)) for acked, n, size in rows}
        self.depth, self.bytes = counts.get(False, (0, 0))
        self.kept, self.kept_bytes = counts.get(True, (0, 0))
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
                seq = self.next_seq(stream)
                self._insert(prio, topic, build(seq), stream, seq)
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

    def _insert(self, prio: int, topic: str, payload: bytes, stream: str, seq: int) -> None:
        size = len(payload) + len(topic)
        if self.bytes + self.kept_bytes + size > self.max_bytes:
            self._forget_acked(size)
            if prio != PRIO_ALERT:
                self._make_room(size)
        cur = self.db.execute(
            "INSERT INTO outbox (prio, topic, payload, size, stream, seq) VALUES (?, ?, x'', ?, ?, ?)",
            (prio, topic, size, stream, seq),
        )
        self.db.execute(
            "INSERT INTO outbox_body (id, payload) VALUES (?, ?)", (cur.lastrowid, payload)
        )
        self.depth += 1
        self.bytes += size

    def _forget_acked(self, size: int) -> None:
        """Acknowledged messages kept for repair give way first, oldest first."""
        while self.kept and self.bytes + self.kept_bytes + size > self.max_bytes:
            rows = self.db.execute(
                "SELECT id, size FROM outbox WHERE state = ? ORDER BY prio, id LIMIT 64", (ACKED,)
            ).fetchall()
            for row_id, row_size in rows:
                if self.bytes + self.kept_bytes + size <= self.max_bytes:
                    break
                self.db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                self.kept -= 1
                self.kept_bytes -= int(row_size)

    def _make_room(self, size: int) -> None:
        """Then the oldest telemetry the centre has not acknowledged, counted as dropped."""
        while self.bytes + self.kept_bytes + size > self.max_bytes:
            row = self.db.execute(
                "SELECT id, size FROM outbox WHERE prio != ? AND state != ? ORDER BY prio, id "
                "LIMIT 1",
                (PRIO_ALERT, ACKED),
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

    # --- sending and acknowledging --------------------------------------------------------
    def peek(self, limit: int, after: tuple[int, int] = (-1, 0)) -> list[Queued]:
        """The next queued messages in send order (alerts first), after the (prio, id) given."""
        rows = self.db.execute(
            "SELECT o.id, o.topic, b.payload, o.stream FROM outbox o JOIN outbox_body b "
            "ON b.id = o.id WHERE o.state = ? AND (o.prio, o.id) > (?, ?) "
            "ORDER BY o.prio, o.id LIMIT ?",
            (QUEUED, *after, limit),
        ).fetchall()
        return [Queued(int(i), t, bytes(p), s or "") for i, t, p, s in rows]

    def sent(self, ids: list[int], at: float) -> None:
        """The broker has these (PUBACK): they wait for the centre's Ack."""
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self._txn():
            self.db.execute(
                f"UPDATE outbox SET state = ?, sent_at = ?, first_sent = COALESCE(first_sent, ?) "
                f"WHERE id IN ({marks}) AND state = ?",
                (SENT, at, at, *ids, QUEUED),
            )

    def delete(self, ids: list[int]) -> None:
        """Forget these now: the broker's PUBACK is all they wait for."""
        if not ids:
            return
        marks = ",".join("?" * len(ids))
        with self._txn():
            row = self.db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE id IN ({marks}) "
                "AND state != ?",
                (*ids, ACKED),
            ).fetchone()
            self.db.execute(
                f"DELETE FROM outbox WHERE id IN ({marks}) AND state != ?", (*ids, ACKED)
            )
        self.depth -= int(row[0])
        self.bytes -= int(row[1])

    def ack(self, stream: str, runs: Iterable[tuple[int, int]], at: float) -> int:
        """The centre has committed these numbers of ``stream``: keep them for repair only.
        Returns how many messages that acknowledged (numbers no longer held are ignored)."""
        moved = size = 0
        with self._txn():
            for first, last in runs:
                where = "stream = ? AND seq BETWEEN ? AND ? AND state != ?"
                args = (stream, first, last, ACKED)
                n, b = self.db.execute(
                    f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE {where}", args
                ).fetchone()
                if n:
                    self.db.execute(
                        f"UPDATE outbox SET state = ?, acked_at = ? WHERE {where}",
                        (ACKED, at, *args),
                    )
                    moved, size = moved + int(n), size + int(b)
        self.depth, self.bytes = self.depth - moved, self.bytes - size
        self.kept, self.kept_bytes = self.kept + moved, self.kept_bytes + size
        return moved

    def resend(self, sent_before: float | None = None) -> int:
        """Queue again what was sent (before ``sent_before``, or all of it) and not acknowledged:
        after a reconnect (the Ack of the old connection is lost with it), after a timeout."""
        with self._txn():
            if sent_before is None:
                cur = self.db.execute("UPDATE outbox SET state = ? WHERE state = ?", (QUEUED, SENT))
            else:
                cur = self.db.execute(
                    "UPDATE outbox SET state = ? WHERE state = ? AND sent_at < ?",
                    (QUEUED, SENT, sent_before),
                )
        return cur.rowcount

    def repair(self, stream: str, runs: Iterable[tuple[int, int]]) -> int:
        """The centre never got these numbers: queue every one still held to go again, with its
        original id and seq. Returns how many were found."""
        found = back = size = 0
        with self._txn():
            for first, last in runs:
                where = "stream = ? AND seq BETWEEN ? AND ?"
                rows = self.db.execute(
                    f"SELECT state, COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE {where} "
                    "GROUP BY state",
                    (stream, first, last),
                ).fetchall()
                for state, n, b in rows:
                    found += int(n)
                    if state == ACKED:
                        back, size = back + int(n), size + int(b)
                self.db.execute(
                    f"UPDATE outbox SET state = ?, acked_at = NULL WHERE {where} AND state != ?",
                    (QUEUED, stream, first, last, QUEUED),
                )
        self.depth, self.bytes = self.depth + back, self.bytes + size
        self.kept, self.kept_bytes = self.kept - back, self.kept_bytes - size
        return found

    def prune_acked(self, acked_before: float) -> int:
        """Forget acknowledged messages whose retention for repair has ended."""
        with self._txn():
            n, b = self.db.execute(
                "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM outbox WHERE state = ? "
                "AND acked_at < ?",
                (ACKED, acked_before),
            ).fetchone()
            if n:
                self.db.execute(
                    "DELETE FROM outbox WHERE state = ? AND acked_at < ?", (ACKED, acked_before)
                )
        self.kept, self.kept_bytes = self.kept - int(n), self.kept_bytes - int(b)
        return int(n)

    def waiting(self, now: float) -> Waiting:
        """What the broker has and the centre has not acknowledged, and since when."""
        n, oldest = self.db.execute(
            "SELECT COUNT(*), MIN(first_sent) FROM outbox WHERE state = ?", (SENT,)
        ).fetchone()
        return Waiting(int(n), None if oldest is None else max(0.0, now - float(oldest)))


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
