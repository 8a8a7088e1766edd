"""The durable outbox: order, priority, bound and overflow policy, persistence across reopen;
the states a message goes through until the centre acknowledges it, and its retention for repair."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge.outbox import PRIO_ALERT, PRIO_TELEMETRY, ActiveAlert, Outbox, OutboxBusy, Waiting


def put(box: Outbox, prio: int, text: str) -> None:
    box.enqueue(
        prio,
        "alert" if prio == PRIO_ALERT else "telemetry",
        "t",
        lambda seq: f"{text}#{seq}".encode(),
    )


def payloads(box: Outbox) -> list[str]:
    return [m.payload.decode() for m in box.peek(1000)]


def test_alerts_go_ahead_of_telemetry_and_order_holds(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 10**6)
    for text, prio in [
        ("t1", PRIO_TELEMETRY),
        ("t2", PRIO_TELEMETRY),
        ("a1", PRIO_ALERT),
        ("t3", PRIO_TELEMETRY),
        ("a2", PRIO_ALERT),
    ]:
        put(box, prio, text)
    assert payloads(box) == ["a1#1", "a2#2", "t1#1", "t2#2", "t3#3"]


def test_delete_removes_only_what_the_broker_acknowledged(tmp_path: Path) -> None:
    """``mqtt.ack: broker``: the PUBACK is all a message waits for."""
    box = Outbox(tmp_path / "o.db", 10**6)
    for i in range(5):
        put(box, PRIO_TELEMETRY, f"t{i}")
    first = box.peek(2)
    box.delete([m.id for m in first])
    assert box.depth == 3
    assert payloads(box) == ["t2#3", "t3#4", "t4#5"]


def test_full_outbox_drops_oldest_telemetry_never_alerts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 4096)
    put(box, PRIO_ALERT, "a" * 3000)
    for i in range(20):
        put(box, PRIO_TELEMETRY, f"t{i:02d}" + "x" * 200)
    put(box, PRIO_ALERT, "b" * 3000)  # past the bound: alerts are kept anyway
    kept = payloads(box)
    assert kept[0].startswith("a") and kept[1].startswith("b")
    assert box.dropped > 0
    telemetry = [p[:3] for p in kept[2:]]
    assert telemetry == sorted(telemetry) and telemetry[-1] == "t19"  # the newest survive


def test_everything_survives_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 10**6)
    put(box, PRIO_TELEMETRY, "t")
    alert = ActiveAlert("d1", "high", "gw:d1:high:1", 1, 2.7)
    box.enqueue(PRIO_ALERT, "alert", "t", lambda s: b"a", alert=alert)
    session = box.next_session()
    box.close()
    again = Outbox(tmp_path / "o.db", 10**6)
    assert again.depth == 2
    assert again.active_alerts() == [alert]
    assert again.next_session() == session + 1
    again.enqueue(PRIO_ALERT, "alert", "t", lambda s: f"c{s}".encode(), cleared=("d1", "high"))
    assert again.active_alerts() == []
    assert payloads(again)[-2] == "c2"  # the alert stream's sequence continued


def test_a_second_agent_on_the_same_outbox_is_refused(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 10**6)
    with pytest.raises(OutboxBusy, match="is another edge agent running"):
        Outbox(tmp_path / "o.db", 10**6)
    box.close()
    Outbox(tmp_path / "o.db", 10**6).close()  # free again once the first one is gone


def test_a_failed_enqueue_leaves_the_counters_as_the_file_has_them(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 2_000)
    for i in range(8):
        put(box, PRIO_TELEMETRY, f"t{i}" + "x" * 200)  # full: the oldest went already
    before = (box.depth, box.bytes, box.dropped)
    unwritable = ActiveAlert("d", "r", "a", 1, object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):  # fails after making room and inserting, before COMMIT
        box.enqueue(PRIO_TELEMETRY, "telemetry", "t", lambda s: b"y" * 900, alert=unwritable)
    assert (box.depth, box.bytes, box.dropped) == before
    box.close()
    again = Outbox(tmp_path / "o.db", 2_000)
    assert (again.depth, again.bytes, again.dropped) == before


# --- keep until the centre acknowledges ------------------------------------------------------
# Each step is (operation, argument); after it, the state of every message as
# {payload: state} with q = queued, s = sent (PUBACK), a = acknowledged (kept for repair), and
# the counters (depth, kept). Messages: t1..t4 telemetry seq 1..4, a1 alert seq 1. Time is the
# step's index (the ack timeout and the retention are given as times).

STATE = {0: "q", 1: "s", 2: "a"}
STATE_TABLE = [
    ("sent then acknowledged",
     [("send", 5, None), ("ack", ("telemetry", [(1, 2)]), None)],
     {"a1": "s", "t1": "a", "t2": "a", "t3": "s", "t4": "s"}, (3, 2)),
    ("an ack of numbers out of order, in runs (a shared subscription's member)",
     [("send", 5, None), ("ack", ("telemetry", [(2, 2), (4, 4)]), None)],
     {"a1": "s", "t1": "s", "t2": "a", "t3": "s", "t4": "a"}, (3, 2)),
    ("an ack names a stream: the alert stream's 1 is not telemetry's 1",
     [("send", 5, None), ("ack", ("alert", [(1, 1)]), None)],
     {"a1": "a", "t1": "s", "t2": "s", "t3": "s", "t4": "s"}, (4, 1)),
    ("an ack before the PUBACK (a resent message's first copy was committed)",
     [("ack", ("telemetry", [(3, 3)]), None)],
     {"a1": "q", "t1": "q", "t2": "q", "t3": "a", "t4": "q"}, (4, 1)),
    ("a reconnect queues every sent, unacknowledged message again",
     [("send", 3, None), ("resend", None, None)],
     {"a1": "q", "t1": "q", "t2": "q", "t3": "q", "t4": "q"}, (5, 0)),
    ("the ack timeout queues again only what was sent before it",
     [("send", 2, None), ("send", 2, None), ("resend", 0.5, None)],
     {"a1": "q", "t1": "q", "t2": "s", "t3": "s", "t4": "q"}, (5, 0)),
    ("an ack of a later number queues again the earlier ones sent well before it (lost)",
     [("send", 2, None), ("send", 3, None), ("ack", ("telemetry", [(4, 4)]), None),
      ("below", ("telemetry", 4, 0.5), 1)],
     {"a1": "s", "t1": "q", "t2": "s", "t3": "s", "t4": "a"}, (4, 1)),
    ("a repair queues acknowledged messages again; they count as unacknowledged",
     [("send", 5, None), ("ack", ("telemetry", [(1, 4)]), None),
      ("repair", ("telemetry", [(2, 3), (9, 9)]), 2)],
     {"a1": "s", "t1": "a", "t2": "q", "t3": "q", "t4": "a"}, (3, 2)),
    ("the retention for repair ends: acknowledged messages are forgotten",
     [("send", 5, None), ("ack", ("telemetry", [(1, 2)]), None),
      ("ack", ("telemetry", [(3, 3)]), None), ("prune", 1.5, 2)],
     {"a1": "s", "t3": "a", "t4": "s"}, (2, 1)),
]  # fmt: skip


def _step(box: Outbox, op: str, arg: Any, at: float) -> int | None:
    if op == "send":
        box.sent([m.id for m in box.peek(arg)], at=at)
        return None
    if op == "ack":
        return box.ack(*arg, at=at)
    if op == "resend":
        return box.resend(arg)
    if op == "repair":
        return box.repair(*arg)
    if op == "below":
        return box.resend_below(*arg)
    return box.prune_acked(arg)


@pytest.mark.parametrize(
    ("steps", "states", "counts"),
    [row[1:] for row in STATE_TABLE],
    ids=[row[0] for row in STATE_TABLE],
)
def test_a_message_is_kept_until_the_centre_acknowledges_it(
    tmp_path: Path,
    steps: list[tuple[str, object, int | None]],
    states: dict[str, str],
    counts: tuple[int, int],
) -> None:
    box = Outbox(tmp_path / "o.db", 10**6)
    for name in ("t1", "t2", "a1", "t3", "t4"):
        prio, stream = (PRIO_ALERT, "alert") if name[0] == "a" else (PRIO_TELEMETRY, "telemetry")
        box.enqueue(prio, stream, "t", lambda seq, n=name: n.encode())  # type: ignore[misc]
    for at, (op, arg, returns) in enumerate(steps):
        result = _step(box, op, arg, float(at))
        if returns is not None:
            assert result == returns
    rows = box.db.execute(
        "SELECT CAST(b.payload AS TEXT), o.state FROM outbox o JOIN outbox_body b ON b.id = o.id"
    ).fetchall()
    assert box.db.execute("SELECT COUNT(*) FROM outbox_body").fetchone() == (len(rows),)
    assert {p: STATE[s] for p, s in rows} == states
    assert (box.depth, box.kept) == counts
    sizes = dict(box.db.execute("SELECT state = 2, SUM(size) FROM outbox GROUP BY state = 2"))
    assert (box.bytes, box.kept_bytes) == (sizes.get(0, 0), sizes.get(1, 0))
    box.close()
    again = Outbox(tmp_path / "o.db", 10**6)  # the counters are the file's after a restart
    assert (again.depth, again.bytes, again.kept, again.kept_bytes) == (
        box.depth, box.bytes, box.kept, box.kept_bytes,
    )  # fmt: skip


def test_the_bound_counts_unacknowledged_messages_and_acknowledged_ones_give_way_first(
    tmp_path: Path,
) -> None:
    box = Outbox(tmp_path / "o.db", 4096)
    put(box, PRIO_ALERT, "a" * 1500)
    for i in range(4):
        put(box, PRIO_TELEMETRY, f"t{i}" + "x" * 600)
    box.sent([m.id for m in box.peek(10)], at=1.0)  # the broker has them; nobody acknowledged
    box.ack("telemetry", [(1, 1)], at=2.0)  # t0 is committed: kept for repair
    put(box, PRIO_TELEMETRY, "t4" + "x" * 600)  # does not fit: the acknowledged one goes
    assert (box.dropped, box.kept) == (0, 0)
    put(box, PRIO_TELEMETRY, "t5" + "x" * 600)  # sent but unacknowledged count: t1 dropped
    assert box.dropped == 1
    put(box, PRIO_ALERT, "b" * 1500)  # alerts are kept past the bound, never dropped
    kept = [
        p.decode()[:2] for (p,) in box.db.execute("SELECT payload FROM outbox_body ORDER BY id")
    ]
    assert kept == ["aa", "t2", "t3", "t4", "t5", "bb"]
    assert box.bytes > box.max_bytes and box.dropped == 1


def test_waiting_says_how_many_and_since_when(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 10**6)
    assert box.waiting(now=5.0) == Waiting(0, None)
    for i in range(3):
        put(box, PRIO_TELEMETRY, f"t{i}")
    box.sent([m.id for m in box.peek(1)], at=10.0)
    box.sent([m.id for m in box.peek(2)], at=12.0)
    assert box.waiting(now=30.0) == Waiting(3, 20.0)
    box.resend()
    box.sent([m.id for m in box.peek(3)], at=40.0)  # sent again: waiting since the first send
    assert box.waiting(now=45.0) == Waiting(3, 35.0)


def test_an_outbox_from_before_the_centre_acknowledged_is_upgraded(tmp_path: Path) -> None:
    """Its rows are queued, their stream and number read from the payload, so an Ack finds them."""
    path = tmp_path / "o.db"
    old = sqlite3.connect(path)
    old.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, prio INTEGER NOT NULL,"
        " topic TEXT NOT NULL, payload BLOB NOT NULL, size INTEGER NOT NULL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    )
    rows = [(1, "p/gw/g/telemetry", b'{"kind":"telemetry","seq":7}'),
            (0, "p/gw/g/config/ack", b'{"gateway":"g","version":2}'),
            (1, "p/gw/g/x", b"not json")]  # fmt: skip
    old.executemany("INSERT INTO outbox (prio, topic, payload, size) VALUES (?, ?, ?, 10)", rows)
    old.commit()
    old.close()
    box = Outbox(path, 10**6)
    assert sorted(m.payload for m in box.peek(10)) == sorted(p for _, _, p in rows)
    assert [(m.topic, m.stream) for m in box.peek(10)] == [
        ("p/gw/g/config/ack", ""), ("p/gw/g/telemetry", "telemetry"), ("p/gw/g/x", ""),
    ]  # fmt: skip
    box.sent([m.id for m in box.peek(10)], at=1.0)
    assert box.ack("telemetry", [(7, 7)], at=2.0) == 1
    assert (box.depth, box.kept) == (2, 1)


def test_edge_status_counts_what_the_centre_has_not_acknowledged(tmp_path: Path) -> None:
    """`gridwatch edge status` said '0 waiting (empty)' while 158 messages waited for the
    centre's Ack, and never dated the oldest (the payload moved to its own table)."""
    from edge.status import outbox_summary

    box = Outbox(tmp_path / "o.db", 10**6)
    for ts in (1000, 2000, 3000, 4000):
        box.enqueue(PRIO_TELEMETRY, "telemetry", "t",
                    lambda seq, t=ts: f'{{"ts": {t}}}'.encode())  # type: ignore[misc]  # fmt: skip
    box.enqueue(PRIO_ALERT, "alert", "a", lambda seq: b'{"ts": 5000}')
    box.sent([m.id for m in box.peek(3)], at=1.0)  # the alert, telemetry 1 and 2
    box.ack("telemetry", [(1, 1)], at=2.0)  # telemetry 1: the centre has it
    summary = outbox_summary(box.db)
    assert summary == {"by_kind": {"alerts": 1, "telemetry and the rest": 3}, "waiting": 4,
                       "unacknowledged": 2, "oldest_ts": 2000}  # fmt: skip
    box.close()
