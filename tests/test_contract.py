"""The contract: docs/contract.md shows a valid example of every message; topics are well formed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

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
    # a message may show more than one (GatewayHealth: as an older edge sends it too)
    assert sorted({name for name, _ in EXAMPLES}) == sorted(MESSAGES)


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


def _doc(name: str) -> dict[str, object]:
    text = next(t for n, t in EXAMPLES if n == name)  # the first, the current edge's
    doc: dict[str, object] = json.loads(text)
    return doc


def _set(doc: dict[str, object], path: tuple[str | int, ...], value: object) -> str:
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(doc)  # allow_nan: NaN and Infinity go out as the bare tokens


# (message, field path, value, accepted): each field's range, from the documented example
RANGES: list[tuple[str, tuple[str | int, ...], object, bool]] = [
    ("TelemetryBatch", ("readings", 0, "value"), 2**63 - 1, True),
    ("TelemetryBatch", ("readings", 0, "value"), 2**63, False),
    ("TelemetryBatch", ("readings", 0, "value"), -(2**63), True),
    ("TelemetryBatch", ("readings", 0, "value"), -(2**63) - 1, False),
    ("TelemetryBatch", ("readings", 0, "value"), 10**30, False),
    ("TelemetryBatch", ("readings", 0, "value"), 1e30, True),  # a float that big is a float
    ("TelemetryBatch", ("readings", 0, "value"), float("nan"), False),
    ("TelemetryBatch", ("readings", 0, "value"), float("inf"), False),
    ("TelemetryBatch", ("readings", 0, "value"), float("-inf"), False),
    ("TelemetryBatch", ("readings", 0, "value"), "x" * 200, True),
    ("TelemetryBatch", ("readings", 0, "value"), "x" * 800_000, False),
    ("TelemetryBatch", ("readings", 0, "ts"), 253_402_300_799_999, True),  # 9999-12-31
    ("TelemetryBatch", ("readings", 0, "ts"), 2**63, False),
    ("TelemetryBatch", ("readings", 0, "ts"), -1, False),
    ("TelemetryBatch", ("readings", 0, "device"), "wl 001", False),
    ("TelemetryBatch", ("readings", 0, "device"), "", False),
    ("TelemetryBatch", ("readings", 0, "device"), "d" * 65, False),
    ("TelemetryBatch", ("readings", 0, "point"), "p" * 65, False),
    ("TelemetryBatch", ("readings", 0, "unit"), "m\x00", False),
    ("TelemetryBatch", ("readings", 0, "point"), "level\r", False),  # breaks line protocol
    ("TelemetryBatch", ("readings", 0, "point"), "niveau d'eau é", True),
    ("AlertEvent", ("message",), "line one\nline two", True),
    ("AlertEvent", ("message",), "nul\x00", False),
    ("TelemetryBatch", ("seq",), 2**63 - 1, True),
    ("TelemetryBatch", ("seq",), 2**63, False),
    ("TelemetryBatch", ("session",), -1, False),
    ("TelemetryBatch", ("gateway",), "gw/../x", False),
    ("TelemetryBatch", ("id",), "i" * 65, False),
    ("AlertEvent", ("ts",), 2**63, False),
    ("AlertEvent", ("raised_at",), 10**30, False),
    ("AlertEvent", ("threshold",), float("nan"), False),
    ("AlertEvent", ("alert_id",), "a" * 128, True),
    ("AlertEvent", ("alert_id",), "a" * 129, False),
    ("AlertEvent", ("alert_id",), "a/b", False),
    ("AlertEvent", ("location", "lat"), 90.5, False),
    ("AlertEvent", ("location", "lon"), float("inf"), False),
    ("AlertEvent", ("location", "street"), "s" * 201, False),
    ("AlertEvent", ("message",), "m" * 1000, True),
    ("AlertEvent", ("message",), "m" * 1001, False),
    ("Birth", ("session",), 2**63, False),
    ("Birth", ("config_version",), -1, False),
    ("Birth", ("devices",), [f"d{i}" for i in range(10_001)], False),
    ("Birth", ("device_info", 0, "interval_s"), 0, False),
    ("Birth", ("software",), "s" * 100, True),
    ("Birth", ("software",), "s" * 101, False),
    ("TelemetryBatch", ("readings", 0, "unit"), "u" * 32, True),
    ("TelemetryBatch", ("readings", 0, "unit"), "u" * 33, False),
    ("Death", ("session",), 2**63, False),
    ("GatewayHealth", ("cpu_percent",), float("nan"), False),
    ("GatewayHealth", ("outbox_bytes",), 2**64, False),
    ("GatewayHealth", ("devices", 0, "response_ms"), -1.0, False),
    ("CommandResult", ("error",), "e" * 2001, False),
    ("ConfigAck", ("version",), 2**63, False),
    ("Command", ("value",), 10**30, False),
]


@pytest.mark.parametrize(("name", "path", "value", "accepted"), RANGES)
def test_every_field_has_a_range(
    name: str, path: tuple[str | int, ...], value: object, accepted: bool
) -> None:
    model: type[BaseModel] = getattr(contract, name)
    payload = _set(_doc(name), path, value)
    if accepted:
        model.model_validate_json(payload)
    else:
        with pytest.raises(ValidationError) as err:
            model.model_validate_json(payload)
        # the error says where: the field's path
        assert any(tuple(e["loc"][: len(path)]) == path for e in err.value.errors()), err.value
