"""The rules engine, driven by tables of samples and a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.base import PollOutcome, Sample
from edge.outbox import Outbox
from edge.pipeline import Pipeline
from edge.rules import DeviceRules, message_for
from gridwatch.ground.contract import AlertEvent, AlertState, Quality, Topics
from gridwatch.ground.gatewayconf import load_gateway
from gridwatch.ground.profiles import NoDataRule, OfflineRule, RateRule, ThresholdRule

CABINET = Path(__file__).resolve().parent / "data" / "cabinet.yaml"
OFFLINE_RULE = OfflineRule(kind="offline", id="offline", category="2101")

HIGH = ThresholdRule(
    kind="threshold", id="high", point="level", above=2.5, hysteresis=0.2, category="FLOOD"
)
BAND = ThresholdRule(
    kind="threshold", id="band", point="level", above=5, below=1, hysteresis=0.5, category="X"
)
DEBOUNCED = ThresholdRule(
    kind="threshold", id="deb", point="level", above=2.5, debounce_samples=3, category="FLOOD"
)
TIMED = ThresholdRule(
    kind="threshold", id="t", point="level", above=2.5, debounce_s=10, category="F"
)
RISE = RateRule(
    kind="rate_of_change", id="rise", point="level", rise=0.5, window_s=60, category="F"
)


def outcome(
    ts_s: float, value: float | None, quality: Quality = Quality.GOOD, ok: bool = True
) -> PollOutcome:
    ts = int(ts_s * 1000)
    return PollOutcome("d1", ts, [Sample("d1", "level", value, "m", ts, quality)], ok)


def run(
    rule: ThresholdRule | RateRule, series: list[tuple[float, float]]
) -> list[tuple[float, str]]:
    rules = DeviceRules("d1", [rule], 1.0, now=0)
    events = []
    for t, v in series:
        for tr in rules.feed(outcome(t, v)):
            events.append((t, tr.state.value))
    return events


CASES = [
    (
        "raise once, clear once",
        HIGH,
        [(0, 2.0), (1, 2.6), (2, 2.7), (3, 2.4), (4, 2.29)],
        [(1, "raised"), (4, "cleared")],
    ),
    ("hysteresis holds it", HIGH, [(0, 2.6), (1, 2.4), (2, 2.6), (3, 2.31)], [(0, "raised")]),
    ("peak moves -> update", HIGH, [(0, 2.6), (1, 3.0), (2, 3.1)], [(0, "raised"), (1, "updated")]),
    ("band below", BAND, [(0, 3), (1, 0.9), (2, 1.2), (3, 1.6)], [(1, "raised"), (3, "cleared")]),
    ("band above", BAND, [(0, 5.1), (1, 4.4)], [(0, "raised"), (1, "cleared")]),
    (
        "debounce 3 samples",
        DEBOUNCED,
        [(0, 3), (1, 3), (2, 2), (3, 3), (4, 3), (5, 3)],
        [(5, "raised")],
    ),
    (
        "debounce clear",
        DEBOUNCED,
        [(0, 3), (1, 3), (2, 3), (3, 1), (4, 1), (5, 3), (6, 1), (7, 1), (8, 1)],
        [(2, "raised"), (8, "cleared")],
    ),
    ("debounce 10 s", TIMED, [(0, 3), (5, 3), (9.9, 3), (10, 3)], [(10, "raised")]),
    (
        "rate of rise",
        RISE,
        [(0, 1.0), (20, 1.2), (40, 1.6), (100, 1.6), (200, 1.6)],
        [(40, "raised"), (100, "cleared")],
    ),
]


@pytest.mark.parametrize(("name", "rule", "series", "expected"), CASES, ids=[c[0] for c in CASES])
def test_value_rules(
    name: str,
    rule: ThresholdRule,
    series: list[tuple[float, float]],
    expected: list[tuple[float, str]],
) -> None:
    assert run(rule, series) == expected


def test_bad_quality_is_never_judged() -> None:
    rules = DeviceRules("d1", [HIGH], 1.0, now=0)
    assert rules.feed(outcome(0, None, Quality.COMM_ERROR, ok=False)) == []
    assert rules.feed(outcome(1, 9.9, Quality.OUT_OF_RANGE)) == []


def test_offline_after_consecutive_failures_and_back() -> None:
    rules = DeviceRules(
        "d1", [OfflineRule(kind="offline", id="off", failures=3, category="OFF")], 1.0, now=0
    )
    states = [
        [t.state for t in rules.feed(outcome(i, None, Quality.COMM_ERROR, ok=False))]
        for i in range(4)
    ]
    assert states == [[], [], [AlertState.RAISED], []]
    assert [t.state for t in rules.feed(outcome(5, 1.0))] == [AlertState.CLEARED]


def test_no_data_when_silent_longer_than_expected() -> None:
    rules = DeviceRules(
        "d1", [NoDataRule(kind="no_data", id="nd", factor=3, category="SILENT")], 10.0, now=0
    )
    assert rules.tick(29_000) == []
    assert [t.state for t in rules.tick(31_000)] == [AlertState.RAISED]
    assert rules.tick(40_000) == []  # raised once
    assert [t.state for t in rules.feed(outcome(41, 1.0))] == [AlertState.CLEARED]


def test_restored_alert_is_not_raised_again_but_clears() -> None:
    rules = DeviceRules("d1", [HIGH], 1.0, now=0)
    rules.restore("high", 2.9)
    assert rules.feed(outcome(0, 2.8)) == []
    assert [t.state for t in rules.feed(outcome(1, 2.0))] == [AlertState.CLEARED]


@pytest.mark.parametrize(
    ("name", "rule", "state", "message"),
    [
        ("raised: the rule's text", HIGH.model_copy(update={"message": "Water level above warning "
         "line"}), AlertState.RAISED, "Water level above warning line"),
        ("updated: the same", HIGH.model_copy(update={"message": "Above"}), AlertState.UPDATED,
         "Above"),
        ("cleared: the rule's clear text", HIGH.model_copy(update={
            "message": "Water level above warning line",
            "clear_message": "Water level back below warning line"}), AlertState.CLEARED,
         "Water level back below warning line"),
        ("cleared without a clear text: says it cleared", HIGH.model_copy(update={
            "message": "Water level above warning line"}), AlertState.CLEARED,
         "Cleared: Water level above warning line"),
        ("cleared, no text at all", OFFLINE_RULE, AlertState.CLEARED, "Cleared"),
    ],
)  # fmt: skip
def test_a_cleared_alert_says_it_cleared(
    name: str, rule: ThresholdRule | OfflineRule, state: AlertState, message: str
) -> None:
    assert message_for(rule, state) == message, name


def test_the_edge_sends_the_clear_text_with_the_clearing_value(tmp_path: Path) -> None:
    """The shipped ultrasonic profile through the real pipeline and outbox: the cleared event
    reads 'Water level back below warning line' and carries the value that cleared it."""
    _, devices = load_gateway(CABINET)
    box = Outbox(tmp_path / "o.db", 10**7)
    pipe = Pipeline("gw1", devices, box, Topics("p"), lambda: 1_700_000_000.0)
    for i, level in enumerate([3.0, 3.0, 1.9, 1.82]):  # debounced over two samples both ways
        ts = 1_700_000_000_000 + i * 1000
        pipe.sink(PollOutcome("wl-001", ts, [Sample("wl-001", "level", level, "m", ts,
                                                    Quality.GOOD)], True))  # fmt: skip
    events = [AlertEvent.model_validate_json(m.payload) for m in box.peek(1000)
              if m.topic.endswith("/alert")]  # fmt: skip
    assert [(e.state.value, e.message, e.value) for e in events] == [
        ("raised", "Water level above warning line", 3.0),
        ("cleared", "Water level back below warning line", 1.82),
    ]
    box.close()
