"""The contract: docs/contract.md shows a valid example of every message; topics are well formed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from drivers.base import PollOutcome, Sample
from edge.outbox import Outbox
from edge.pipeline import Pipeline
from gridwatch.ground import contract
from gridwatch.ground.contract import AlertEvent, Quality, TelemetryBatch, Topics
from gridwatch.ground.gatewayconf import load_gateway

DOC = Path(__file__).resolve().parent.parent / "docs" / "contract.md"
EXAMPLES = re.findall(r"```json (\w+)\n(.*?)```", DOC.read_text(), re.S)
MESSAGES = [
    "Birth",
    "Death",
    "TelemetryBatch",
    "AlertEvent",
    "GatewayHealth",
    "ConfigPush",
    "ConfigAck",
    "Command",
    "CommandResult",
    "PlatformAlert",
    "PlatformLifecycle",
    "PlatformEscalation",
]


def test_every_message_has_an_example() -> None:
    assert sorted(name for name, _ in EXAMPLES) == sorted(MESSAGES)


@pytest.mark.parametrize(("name", "text"), EXAMPLES, ids=[n for n, _ in EXAMPLES])
def test_documented_example_is_valid(name: str, text: str) -> None:
    getattr(contract, name).model_validate_json(text)


@pytest.mark.parametrize(
    ("district", "category", "severity", "topic"),
    [
        ("futian", "FLOOD-WATERLOG-01", "major", "p/platform/alert/futian/FLOOD-WATERLOG-01/major"),
        ("", "X", "minor", "p/platform/alert/_/X/minor"),
        ("a/b+#", "c", "info", "p/platform/alert/a_b__/c/info"),
    ],
)
def test_platform_topic_levels_are_safe(
    district: str, category: str, severity: str, topic: str
) -> None:
    assert Topics("p").platform_alert(district, category, severity) == topic


def test_gateway_topic_parsing() -> None:
    t = Topics("p")
    assert t.parse_gateway_topic(t.telemetry("gw1")) == ("gw1", "telemetry")
    assert t.parse_gateway_topic(t.config_ack("gw1")) == ("gw1", "config/ack")
    assert t.parse_gateway_topic("other/gw/x/telemetry") is None


def test_edge_payloads_follow_the_contract(tmp_path: Path) -> None:
    """The edge builds telemetry JSON by hand for speed: it must still be a valid TelemetryBatch."""
    _, devices = load_gateway(Path(__file__).resolve().parent / "data" / "cabinet.yaml")
    box = Outbox(tmp_path / "o.db", 10**7)
    now = [1_700_000_000.0]
    pipe = Pipeline("gw1", devices, box, Topics("p"), lambda: now[0], batch_max=10)
    for i, level in enumerate([1.0, 2.7, 2.8, 2.0, 2.0]):  # debounce: 2 samples
        ts = 1_700_000_000_000 + i * 1000
        pipe.sink(
            PollOutcome(
                "wl-001", ts, [Sample("wl-001", "level", level, "m", ts, Quality.GOOD)], True
            )
        )
    pipe.sink(
        PollOutcome(
            "wl-001", ts, [Sample("wl-001", "level", None, "m", ts, Quality.COMM_ERROR)], False
        )
    )
    pipe.flush()
    msgs = box.peek(100)
    alerts = [AlertEvent.model_validate_json(m.payload) for m in msgs if m.topic.endswith("/alert")]
    batches = [
        TelemetryBatch.model_validate_json(m.payload)
        for m in msgs
        if m.topic.endswith("/telemetry")
    ]
    assert [a.state for a in alerts] == ["raised", "cleared"]
    assert alerts[0].alert_id == alerts[1].alert_id
    assert alerts[0].location.district == "futian"
    readings = [r for b in batches for r in b.readings]
    assert [r.value for r in readings] == [1.0, 2.7, 2.8, 2.0, 2.0, None]
    assert readings[-1].quality is Quality.COMM_ERROR
    assert all(r.historical for r in readings)  # the uplink never came up in this test
