"""The pipeline's reconfiguration: alerts of rules that survive stay open, others are cleared."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import orjson
import pytest

from drivers.base import PollOutcome, Sample
from edge.outbox import Outbox
from edge.pipeline import Pipeline
from gridwatch.ground.contract import AlertEvent, Quality, TelemetryBatch, Topics
from gridwatch.ground.gatewayconf import load_gateway

CABINET = Path(__file__).resolve().parent / "data" / "cabinet.yaml"


def cabinet(tmp_path: Path, batch_max: int = 500) -> tuple[Outbox, Pipeline]:
    """The test cabinet's pipeline on an outbox in ``tmp_path``, at a fixed clock."""
    _, devices = load_gateway(CABINET)
    box = Outbox(tmp_path / "o.db", 10**7)
    clock = lambda: 1_700_000_000.0  # noqa: E731
    return box, Pipeline("gw1", devices, box, Topics("p"), clock, batch_max=batch_max)


def raise_level_alert(pipe: Pipeline, device: str) -> None:
    for i in range(2):  # the profile debounces over two samples
        ts = 1_700_000_000_000 + i * 1000
        pipe.sink(
            PollOutcome(device, ts, [Sample(device, "level", 3.0, "m", ts, Quality.GOOD)], True)
        )


def alert_states(box: Outbox) -> list[tuple[str, str]]:
    events = [
        AlertEvent.model_validate_json(m.payload)
        for m in box.peek(1000)
        if m.topic.endswith("/alert")
    ]
    return [(e.device, e.state.value) for e in events]


def test_reconfigure_keeps_surviving_alerts_and_clears_orphans(tmp_path: Path) -> None:
    box, pipe = cabinet(tmp_path)
    raise_level_alert(pipe, "wl-001")
    raise_level_alert(pipe, "wl-002")
    assert alert_states(box) == [("wl-001", "raised"), ("wl-002", "raised")]

    pipe.reconfigure(
        [d for d in pipe.devices.values() if d.id != "wl-002"]
    )  # wl-002 leaves the gateway

    assert alert_states(box)[2:] == [("wl-002", "cleared")]
    assert set(pipe.active) == {("wl-001", "level_high")}
    assert [a.rule for a in box.active_alerts()] == ["level_high"]
    raise_level_alert(pipe, "wl-001")  # still active after the change: not raised again
    assert len(alert_states(box)) == 3


def level_poll(device: str, i: int) -> PollOutcome:
    ts = 1_700_000_000_000 + i * 500
    samples = [
        Sample(device, "level", 1.0 + i / 1000, "m", ts, Quality.GOOD),
        Sample(device, "counter", i, "", ts, Quality.GOOD),
    ]
    return PollOutcome(device, ts, samples, True)


def test_a_poll_is_durable_the_moment_it_is_taken(tmp_path: Path) -> None:
    """Killed before its batcher ran, the gateway still has every poll at its next start."""
    box, pipe = cabinet(tmp_path, batch_max=5)
    pipe.uplink_up = True
    for i in range(1, 8):
        pipe.sink(level_poll("wl-001", i))  # 14 readings: two batches queued, one poll staged
    queued = [TelemetryBatch.model_validate_json(m.payload) for m in box.peek(100)]
    box.close()  # SIGKILL: no flush; the kernel releases the file, a new process opens it
    box2 = Outbox(tmp_path / "o.db", 10**7)
    devices = list(pipe.devices.values())
    pipe2 = Pipeline("gw1", devices, box2, Topics("p"), lambda: 1_700_000_100.0, batch_max=5)
    pipe2.flush()
    batches = [TelemetryBatch.model_validate_json(m.payload) for m in box2.peek(100)]
    assert [b.seq for b in batches] == [1, 2, 3, 4]
    assert batches[: len(queued)] == queued
    counters = [r.value for b in batches for r in b.readings if r.point == "counter"]
    assert counters == list(range(1, 8))  # every poll once, in order
    # polls are never split across batches, and a batch stays within batch_max when it can
    assert [len(b.readings) for b in batches] == [4, 4, 4, 2]
    # what was staged at the kill goes out late, so it is marked historical
    recovered = [r for b in batches[len(queued) :] for r in b.readings]
    assert recovered and all(r.historical for r in recovered)
    assert not any(r.historical for b in queued for r in b.readings)
    assert box2.take_staged() == []
    box2.close()
    assert Outbox(tmp_path / "o.db", 10**7).take_staged() == []  # and nothing comes back twice


def test_a_journal_that_cannot_be_written_keeps_the_readings_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box, pipe = cabinet(tmp_path)
    pipe.sink(level_poll("wl-001", 1))  # journalled

    def full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(box.journal, "append", full)
    pipe.sink(level_poll("wl-001", 2))  # in memory only, and said so
    monkeypatch.undo()
    pipe.sink(level_poll("wl-001", 3))
    pipe.flush()
    batch = TelemetryBatch.model_validate_json(box.peek(1)[0].payload)
    assert [r.value for r in batch.readings if r.point == "counter"] == [1, 2, 3]
    assert pipe.stage_failures == 1
    assert box.meta("batched_through") == 2  # the journal's own polls, numbered 1 and 2


def test_an_old_journal_beside_a_new_outbox_is_not_sent_again(tmp_path: Path) -> None:
    box, pipe = cabinet(tmp_path)
    pipe.sink(level_poll("wl-001", 1))
    box.close()
    for f in tmp_path.glob("o.db*"):  # an operator resets the outbox, not the journal
        if not f.name.endswith("-polls"):
            f.unlink()
    fresh = Outbox(tmp_path / "o.db", 10**7)
    assert fresh.take_staged() == []


def test_an_alert_the_outbox_cannot_take_is_queued_late_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box, pipe = cabinet(tmp_path)
    real = box.enqueue

    def disk_full(*args: Any, **kw: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(box, "enqueue", disk_full)
    raise_level_alert(pipe, "wl-001")  # no exception into the driver
    pipe.tick()  # still full: it keeps waiting
    assert alert_states(box) == [] and len(pipe.unqueued_alerts) == 1
    monkeypatch.setattr(box, "enqueue", real)
    pipe.tick()
    assert alert_states(box) == [("wl-001", "raised")]
    assert [a.rule for a in box.active_alerts()] == ["level_high"]


def test_memory_only_polls_are_bounded_oldest_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    box, pipe = cabinet(tmp_path)
    monkeypatch.setattr("edge.pipeline.MEMORY_ONLY_MAX", 4)

    def full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(box.journal, "append", full)
    for i in range(1, 6):  # 2 readings each: only the newest two polls fit
        pipe.sink(level_poll("wl-001", i))
    counters = [r["value"] for p in pipe.buffer for r in orjson.loads(b"[" + p.payload + b"]")
                if r["point"] == "counter"]  # fmt: skip
    assert counters == [4, 5]
    assert (pipe.buffered, pipe.dropped_readings) == (4, 6)
