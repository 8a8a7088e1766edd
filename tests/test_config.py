"""Configs and profiles: every shipped file is valid; a bad one is reported with file, line, keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gridwatch.ground.gatewayconf import load_gateway
from gridwatch.ground.profiles import (
    ModbusPoint,
    MqttPoint,
    load_profiles,
    onoff,
    point_decimals,
    shown_points,
)
from gridwatch.top.cli import main as cli
from gridwatch.top.configcheck import check

ROOT = Path(__file__).resolve().parent.parent / "firmware_configs"

GOOD_PROFILE = """\
profile:
  id: p1
  name: Test sensor
  kind: water_level
  protocol: modbus
  interval_s: 1
  points:
    level:
      table: holding
      address: 0
      data_type: uint16
"""

BAD = [
    # (what, text, expected fragments of the message)
    (
        "wrong data type",
        GOOD_PROFILE.replace("data_type: uint16", "data_type: uint17"),
        [":11: profile -> points -> level -> data_type:", "uint17"],
    ),
    (
        "typo in a key",
        GOOD_PROFILE.replace("address: 0", "adress: 0"),
        [":10: profile -> points -> level -> adress:", "Extra inputs are not permitted"],
    ),
    (
        "coil that is not bool",
        GOOD_PROFILE.replace("table: holding", "table: coil"),
        [":8: profile -> points -> level:", "must have data_type 'bool'"],
    ),
    (
        "rule on unknown point",
        GOOD_PROFILE
        + "  rules:\n    - {id: r, kind: threshold, point: nope, above: 1, category: X}\n",
        [":1: profile:", "unknown point 'nope'"],
    ),
    ("not YAML at all", "profile: [unclosed\n", [":2:", "not valid YAML"]),
    (
        "band the wrong way round",
        GOOD_PROFILE
        + "  rules:\n    - {id: r, kind: threshold, point: level, above: 1, below: 2, category: X}\n",
        [":13: profile -> rules -> 0:", "'below' must be lower than 'above'"],
    ),
]


@pytest.mark.parametrize(("what", "text", "expected"), BAD, ids=[b[0] for b in BAD])
def test_bad_profile_is_reported_with_file_line_and_key(
    tmp_path: Path, what: str, text: str, expected: list[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    problems = check(path)
    assert problems, what
    joined = "\n".join(problems)
    assert str(path) in joined
    for fragment in expected:
        assert fragment in joined, joined


def test_every_shipped_profile_and_gateway_config_is_valid() -> None:
    profiles = load_profiles(ROOT / "profiles")
    assert {"water-level-ultrasonic", "smoke-detector-modbus"} <= set(profiles)
    for gw in (ROOT / "gateways").glob("*.yaml"):
        load_gateway(gw)


def test_gateway_with_unknown_profile_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway: {id: g1}\nbuses:\n  - {type: modbus_tcp, id: b, host: h}\n"
        "devices:\n  - {id: d1, profile: no-such-profile, bus: b}\n"
    )
    assert check(path) == [
        f"{path}:5: devices -> 0 -> profile: unknown profile (got 'no-such-profile')"
    ]


def test_cli_exit_codes_and_schema_export(tmp_path: Path) -> None:
    good = tmp_path / "p.yaml"
    good.write_text(GOOD_PROFILE)
    assert cli(["config", "check", str(good), "--schema-dir", str(tmp_path / "s")]) == 0
    schema = json.loads((tmp_path / "s" / "gateway.schema.json").read_text())
    assert "devices" in schema["properties"]
    bad = tmp_path / "b.yaml"
    bad.write_text(GOOD_PROFILE.replace("interval_s: 1", "interval_s: -1"))
    assert cli(["config", "check", str(bad)]) == 1
    assert cli(["edge", "run", "-c", str(bad), "--validate-config"]) == 1


def test_every_shipped_rule_code_is_a_catalogue_item() -> None:
    from gridwatch.ground.catalogue import load_catalogue

    cat = load_catalogue(ROOT / "catalogue")
    for profile in load_profiles(ROOT / "profiles").values():
        for rule in profile.rules:
            assert cat.lookup(rule.category) is not None, (profile.id, rule.id, rule.category)


def test_poll_interval_not_longer_than_bus_timeout_is_refused_at_load(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway: {id: g1}\nbuses:\n  - {type: modbus_tcp, id: b, host: h, timeout_s: 1.0}\n"
        "devices:\n  - id: d1\n    profile: water-level-ultrasonic\n    bus: b\n    interval_s: 0.5\n"
    )
    assert check(path) == [
        f"{path}:8: devices -> 0 -> interval_s: poll interval 0.5s must be longer than "
        "bus 'b' timeout 1.0s (got 0.5)"
    ]


# how a point's value is shown: (the point, decimals, on/off)
SHOWN = [
    (ModbusPoint(table="input", address=0, data_type="float32", unit="%/m"), 2, False),
    (ModbusPoint(table="input", address=0, data_type="float32", decimals=3), 3, False),
    (ModbusPoint(table="holding", address=0, data_type="uint16", scale=0.001, unit="m"), 3, False),
    (ModbusPoint(table="holding", address=0, data_type="int16", scale=0.1), 1, False),
    (ModbusPoint(table="holding", address=0, data_type="uint16", scale=0.5), 1, False),
    (ModbusPoint(table="holding", address=0, data_type="uint16", scale=10), 0, False),
    (ModbusPoint(table="holding", address=0, data_type="uint32"), 0, False),
    (ModbusPoint(table="holding", address=0, data_type="uint16", scale=0.01, decimals=1), 1, False),
    (ModbusPoint(table="input", address=2, data_type="bit", bit=0), None, True),
    (ModbusPoint(table="coil", address=0, data_type="bool"), None, True),
    (ModbusPoint(table="holding", address=0, data_type="string", length=4), None, False),
    (MqttPoint(path="data.obscuration"), 2, False),
    (MqttPoint(path="stats.depth_cm", scale=0.01), 2, False),
]


@pytest.mark.parametrize(("point", "decimals", "is_onoff"), SHOWN)
def test_a_value_is_shown_with_its_points_decimals(
    point: ModbusPoint | MqttPoint, decimals: int | None, is_onoff: bool
) -> None:
    assert (point_decimals(point), onoff(point)) == (decimals, is_onoff)


def test_a_profile_says_how_its_points_are_shown() -> None:
    smoke = load_profiles(ROOT / "profiles")["smoke-detector-modbus"]
    shown = shown_points(smoke)
    assert shown["obscuration"] == {"unit": "%/m", "decimals": 2, "onoff": False,
                                    "limits": [{"rule": "smoke", "above": 4.0, "below": None}]}  # fmt: skip
    assert shown["alarm"]["onoff"] and shown["battery"]["decimals"] == 2


RULED = (
    GOOD_PROFILE
    + """\
  rules:
    - id: level_high
      kind: threshold
      point: level
      above: 2.5
      category: "040401"
      severity: major
    - id: level_rising
      kind: rate_of_change
      point: level
      rise: 0.5
      window_s: 60
      category: "040602"
      severity: minor
"""
)


@pytest.mark.parametrize(
    ("what", "text", "expected"),
    [
        ("code and severity agree", RULED.replace("040602", "040402"), []),
        (
            "a minor rule under a critical code (the issue's pressure sensor)",
            RULED,
            [":25: profile -> rules -> 1 -> severity: 040602 is '道路积水超过30厘米' (Road "
             "waterlogging over 30 cm), critical in the catalogue: a rule under it must be "
             "critical too, or use a code that fits the rule (got 'minor')",
             ":20: profile -> rules -> 1 -> kind: 040602 '道路积水超过30厘米' is filed by the "
             "centre when water_depth crosses a line: only a threshold rule can catch that "
             "(got 'rate_of_change')"],
        ),
        (
            "a code the catalogue does not have",
            RULED.replace("040401", "FLOOD-WATERLOG-01").replace("040602", "040402"),
            [":17: profile -> rules -> 0 -> category: not a code of the catalogue (got "
             "'FLOOD-WATERLOG-01')"],
        ),
        (
            "a code a district layer adds is a catalogue code",
            RULED.replace("point: level\n      above: 2.5", "point: water_depth\n      above: 0.1")
            .replace("    level:", "    water_depth:").replace("point: level", "point: water_depth")
            .replace("040401", "040611").replace("severity: major", "severity: critical")
            .replace("040602", "040402"),
            [],
        ),
    ],
)  # fmt: skip
def test_a_rule_must_agree_with_the_catalogue(
    tmp_path: Path, what: str, text: str, expected: list[str]
) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(text)
    assert check(path) == [f"{path}{e}" for e in expected], what
    assert cli(["config", "check", str(path)]) == (1 if expected else 0)


def test_a_device_rule_in_a_gateway_config_must_agree_with_the_catalogue(tmp_path: Path) -> None:
    path = tmp_path / "gw.yaml"
    path.write_text(
        "gateway: {id: g1}\nbuses:\n  - {type: modbus_tcp, id: b, host: h}\n"
        "devices:\n  - id: d1\n    profile: water-level-ultrasonic\n    bus: b\n    rules:\n"
        "      - {id: smoke, kind: threshold, point: level, above: 1, category: '2201',\n"
        "         severity: minor}\n"
    )
    [problem] = check(path)
    assert problem.startswith(f"{path}:10: devices -> 0 -> rules -> 0 -> severity: 2201")


def test_a_checked_catalogue_is_the_one_rules_are_held_to(tmp_path: Path) -> None:
    """`config check` given a catalogue folder and a profile judges the profile by that folder."""
    cat = tmp_path / "catalogue"
    cat.mkdir()
    (cat / "national.yaml").write_text((ROOT / "catalogue" / "national.yaml").read_text())
    (cat / "city.yaml").write_text(
        "catalogue:\n  layer: city\n  city: '310000'\n  extends: national.yaml\n"
        "  name: {zh: 城, en: C}\n  categories:\n"
        + "".join(
            f"    - {{code: '{code}', kind: event, name: {{zh: 水, en: W}}, severity: {sev},\n"
            "       filing: {zh: 报, en: F}, limits_min: {A: 1, B: 2, C: 3},\n"
            "       closure: {zh: 结, en: C}, department: {code: D, zh: 部, en: D}}\n"
            for code, sev in (("040401", "major"), ("040602", "minor"))
        )
    )
    prof = tmp_path / "p.yaml"
    prof.write_text(RULED)
    assert cli(["config", "check", str(cat), str(prof)]) == 0
    assert cli(["config", "check", str(prof)]) == 1  # the shipped catalogue says critical


def test_every_shipped_rule_agrees_with_the_shipped_catalogue() -> None:
    assert cli(["config", "check"]) == 0
