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
    "Ack",
    "Repair",
    "PlatformAlert",
    "PlatformLifecycle",
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
        ("310104", "040401", "major", "p/platform/alert/310104/040401/major"),
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
    assert alerts[0].location.district == "310104"
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


@pytest.mark.parametrize(
    ("seqs", "runs"),
    [
        ([], []),
        ([5], [(5, 5)]),
        ([3, 1, 2], [(1, 3)]),
        ([1, 2, 4, 4, 5, 9], [(1, 2), (4, 5), (9, 9)]),
        ([0, 2**63 - 1], [(0, 0), (2**63 - 1, 2**63 - 1)]),
    ],
)
def test_seq_ranges_are_the_fewest_runs(seqs: list[int], runs: list[tuple[int, int]]) -> None:
    assert contract.seq_ranges(seqs) == runs


@pytest.mark.parametrize(
    ("delivered", "expected"),
    [
        ([], {}),
        (  # one gateway, two streams, out of order and repeated (a duplicate in the same step)
            [("g1", "telemetry", 7), ("g1", "telemetry", 5), ("g1", "alert", 2),
             ("g1", "telemetry", 6), ("g1", "telemetry", 7)],
            {"g1": {"telemetry": [[5, 7]], "alert": [[2, 2]]}},
        ),
        (  # two gateways: one message each, never mixed
            [("g1", "health", 1), ("g2", "health", 1)],
            {"g1": {"health": [[1, 1]]}, "g2": {"health": [[1, 1]]}},
        ),
        (  # a shared subscription's member committed every other number: runs, no watermark
            [("g1", "telemetry", n) for n in (2, 4, 6)],
            {"g1": {"telemetry": [[2, 2], [4, 4], [6, 6]]}},
        ),
        (  # not from an outbox: an unknown stream, a negative number, a gateway id the
           # contract refuses (from a message quarantined for its topic)
            [("g1", "status", 1), ("g1", "telemetry", -1), ("a b", "telemetry", 1)],
            {},
        ),
    ],
)  # fmt: skip
def test_encode_acks_one_per_gateway(
    delivered: list[tuple[str, str, int]], expected: dict[str, dict[str, list[list[int]]]]
) -> None:
    acks = contract.encode_acks(delivered, ts=1_764_280_900_000)
    wire = {gw: json.loads(a.model_dump_json()) for gw, a in acks.items()}
    assert {gw: doc["streams"] for gw, doc in wire.items()} == expected
    for gw, doc in wire.items():  # what goes out decodes back to the same message
        assert doc["gateway"] == gw and doc["kind"] == "ack"
        assert contract.Ack.model_validate(doc) == acks[gw]


@pytest.mark.parametrize(
    ("name", "doc", "where"),
    [
        ("Ack", {"gateway": "g", "ts": 1, "streams": {"telemetry": [[3, 1]]}},
         ("streams", "telemetry", 0)),
        ("Ack", {"gateway": "g", "ts": 1, "streams": {"status": [[1, 1]]}}, ("streams", "status")),
        ("Ack", {"gateway": "g", "ts": 1, "streams": {"alert": [[-1, 1]]}},
         ("streams", "alert", 0, 0)),
        ("Ack", {"gateway": "g/h", "ts": 1, "streams": {}}, ("gateway",)),
        ("Repair", {"gateway": "g", "stream": "alert", "ranges": [], "ts": 1}, ("ranges",)),
        ("Repair", {"gateway": "g", "stream": "alert", "ranges": [[2, 1]], "ts": 1},
         ("ranges", 0)),
        ("Repair", {"gateway": "g", "stream": "cmd", "ranges": [[1, 1]], "ts": 1}, ("stream",)),
    ],
)  # fmt: skip
def test_ack_and_repair_refusals_say_where(
    name: str, doc: dict[str, object], where: tuple[str | int, ...]
) -> None:
    with pytest.raises(ValidationError) as err:
        getattr(contract, name).model_validate_json(json.dumps(doc))
    assert any(tuple(e["loc"][: len(where)]) == where for e in err.value.errors()), err.value
