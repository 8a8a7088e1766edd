"""The durable outbox: order, priority, bound and overflow policy, persistence across reopen."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.outbox import PRIO_ALERT, PRIO_TELEMETRY, ActiveAlert, Outbox, OutboxBusy


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


def test_ack_removes_only_what_was_acknowledged(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", 10**6)
    for i in range(5):
        put(box, PRIO_TELEMETRY, f"t{i}")
    first = box.peek(2)
    box.ack([m.id for m in first])
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
