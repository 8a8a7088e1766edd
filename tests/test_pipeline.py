"""The pipeline's reconfiguration: alerts of rules that survive stay open, others are cleared."""

from __future__ import annotations

from pathlib import Path

from drivers.base import PollOutcome, Sample
from edge.outbox import Outbox
from edge.pipeline import Pipeline
from gridwatch.contract import AlertEvent, Quality, Topics
from gridwatch.gatewayconf import load_gateway

CABINET = Path(__file__).resolve().parent / "data" / "cabinet.yaml"


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
    _, devices = load_gateway(CABINET)
    box = Outbox(tmp_path / "o.db", 10**7)
    pipe = Pipeline("gw1", devices, box, Topics("p"), lambda: 1_700_000_000.0)
    raise_level_alert(pipe, "wl-001")
    raise_level_alert(pipe, "wl-002")
    assert alert_states(box) == [("wl-001", "raised"), ("wl-002", "raised")]

    pipe.reconfigure([d for d in devices if d.id != "wl-002"])  # wl-002 leaves the gateway

    assert alert_states(box)[2:] == [("wl-002", "cleared")]
    assert set(pipe.active) == {("wl-001", "level_high")}
    assert [a.rule for a in box.active_alerts()] == ["level_high"]
    raise_level_alert(pipe, "wl-001")  # still active after the change: not raised again
    assert len(alert_states(box)) == 3
