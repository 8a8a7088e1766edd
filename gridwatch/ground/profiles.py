"""Device profiles: a sensor model described once, as data (``firmware_configs/profiles``).

A profile names the protocol, the points (where each value lives and how it decodes), the
expected reporting interval, default detection rules, and how ``gridwatch sim`` imitates it.
Pure models only; loading goes through :mod:`gridwatch.ground.yamlconf` so errors name file and line.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gridwatch.ground.contract import Severity
from gridwatch.ground.yamlconf import ConfigError, ConfigProblem, iter_yaml_files, load_model

DataType = Literal[
    "int16", "uint16", "int32", "uint32", "int64", "uint64",
    "float32", "float64", "bool", "bit", "string",
]  # fmt: skip
Table = Literal["holding", "input", "coil", "discrete"]
Order = Literal["big", "little"]

REGISTER_COUNT: dict[str, int] = {
    "int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "int64": 4, "uint64": 4,
    "float32": 2, "float64": 4, "bool": 1, "bit": 1,
}  # fmt: skip


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ValueRange(Strict):
    min: float | None = Field(default=None, description="Lowest physically plausible value.")
    max: float | None = Field(default=None, description="Highest physically plausible value.")


Decimals = Annotated[
    int | None,
    Field(ge=0, le=6, description="Decimals a value is shown with; default: from the scale "
          "(0.01 -> 2), 2 for a float, 0 for an integer."),
]  # fmt: skip
"""How a point's value is shown to people; the value itself is never rounded."""


class ModbusPoint(Strict):
    table: Table = Field(description="Modbus table the point lives in.")
    address: int = Field(ge=0, le=65535, description="Zero-based protocol address.")
    data_type: DataType = Field(default="uint16", description="How the raw words decode.")
    length: int = Field(default=0, ge=0, le=125, description="Registers of a string point.")
    bit: int | None = Field(default=None, ge=0, le=15, description="Bit index for 'bit'.")
    byte_order: Order = Field(default="big", description="Byte order inside each register.")
    word_order: Order = Field(default="big", description="Register order of multi-word values.")
    scale: float = Field(default=1.0, description="value = raw * scale + offset")
    offset: float = Field(default=0.0, description="value = raw * scale + offset")
    unit: str = Field(default="", description="Engineering unit after scaling.")
    range: ValueRange | None = Field(default=None, description="Valid range; outside is flagged.")
    sentinels: list[int] = Field(
        default_factory=list, description="Raw values meaning 'sensor absent' (e.g. 65535)."
    )
    writable: bool = Field(default=False, description="Commands may write this point.")
    decimals: Decimals = None

    @model_validator(mode="after")
    def _check_shape(self) -> ModbusPoint:
        bit_table = self.table in ("coil", "discrete")
        if bit_table and self.data_type != "bool":
            raise ValueError(f"a {self.table} point must have data_type 'bool'")
        if self.data_type == "bit" and self.bit is None:
            raise ValueError("data_type 'bit' needs 'bit' (0..15)")
        if self.data_type == "string" and self.length == 0:
            raise ValueError("data_type 'string' needs 'length' (registers)")
        return self

    @property
    def count(self) -> int:
        """How many registers (or bits) the point occupies."""
        if self.table in ("coil", "discrete"):
            return 1
        if self.data_type == "string":
            return self.length
        return REGISTER_COUNT[self.data_type]


class MqttPoint(Strict):
    path: str = Field(description="Dotted path into the JSON payload, e.g. 'data.level'.")
    unit: str = Field(default="", description="Engineering unit.")
    scale: float = Field(default=1.0, description="value = raw * scale + offset")
    offset: float = Field(default=0.0, description="value = raw * scale + offset")
    range: ValueRange | None = Field(default=None, description="Valid range; outside is flagged.")
    decimals: Decimals = None


Point = ModbusPoint | MqttPoint


def onoff(point: Point) -> bool:
    """A point whose value is on or off (a bit, a coil): drawn as steps, never as a number."""
    return isinstance(point, ModbusPoint) and point.data_type in ("bool", "bit")


def point_decimals(point: Point) -> int | None:
    """The decimals a value of ``point`` is shown with; None for on/off and text points.

    A float32 reading of 2.9 arrives as 2.896005...: the digits past the sensor's resolution are
    decoding noise. The resolution is the profile's ``decimals`` when it says, else the scale's
    (a raw count times 0.01 has two), else 2 for a float and 0 for an integer."""
    if onoff(point) or (isinstance(point, ModbusPoint) and point.data_type == "string"):
        return None
    if point.decimals is not None:
        return point.decimals
    if point.scale != 1 and point.scale != 0:
        return min(6, max(0, math.ceil(-math.log10(abs(point.scale)) - 1e-9)))
    if isinstance(point, ModbusPoint) and not point.data_type.startswith("float"):
        return 0
    return 2


class RuleBase(Strict):
    id: str = Field(description="Rule id, unique within the device; part of the alert id.")
    category: str = Field(description="Event catalogue code this rule reports under.")
    severity: Severity = Field(default=Severity.MAJOR, description="Alert severity.")
    message: str = Field(default="", description="Human text for the alert.")
    clear_message: str = Field(
        default="",
        description="Human text when the alert clears, e.g. 'Water level back below warning "
        "line'; without it: 'Cleared: <message>'. The clearing value follows it.",
    )


class ThresholdRule(RuleBase):
    kind: Literal["threshold"]
    point: str = Field(description="Point the rule watches.")
    above: float | None = Field(default=None, description="Raise when value > above.")
    below: float | None = Field(default=None, description="Raise when value < below.")
    hysteresis: float = Field(default=0.0, ge=0, description="Clear only this far back inside.")
    debounce_samples: int = Field(default=1, ge=1, description="Samples the condition must hold.")
    debounce_s: float = Field(default=0.0, ge=0, description="Seconds the condition must hold.")

    @model_validator(mode="after")
    def _check_limits(self) -> ThresholdRule:
        if self.above is None and self.below is None:
            raise ValueError("a threshold rule needs 'above', 'below' or both (a band)")
        if self.above is not None and self.below is not None and self.below >= self.above:
            raise ValueError("'below' must be lower than 'above' (raise outside the band)")
        return self


class RateRule(RuleBase):
    kind: Literal["rate_of_change"]
    point: str = Field(description="Point the rule watches.")
    rise: float | None = Field(default=None, gt=0, description="Raise on a rise of this much...")
    fall: float | None = Field(default=None, gt=0, description="...or a fall of this much...")
    window_s: float = Field(gt=0, description="...within this many seconds.")

    @model_validator(mode="after")
    def _check(self) -> RateRule:
        if self.rise is None and self.fall is None:
            raise ValueError("a rate_of_change rule needs 'rise' or 'fall'")
        return self


class NoDataRule(RuleBase):
    kind: Literal["no_data"]
    factor: float = Field(default=3.0, gt=1, description="Silent for factor x interval.")


class OfflineRule(RuleBase):
    kind: Literal["offline"]
    failures: int = Field(default=3, ge=1, description="Consecutive failed polls.")


Rule = Annotated[ThresholdRule | RateRule | NoDataRule | OfflineRule, Field(discriminator="kind")]


class SimBehaviour(Strict):
    """How ``gridwatch sim`` animates one point (a reading = base + wave + event)."""

    base: float = Field(default=0.0, description="Resting value.")
    noise: float = Field(default=0.0, ge=0, description="Peak random jitter.")
    event_at_s: float | None = Field(default=None, description="Seconds after start of the event.")
    event_rise: float = Field(default=0.0, description="How far the event moves the value.")
    event_ramp_s: float = Field(default=20.0, gt=0, description="Seconds to reach the peak.")
    event_hold_s: float = Field(default=30.0, ge=0, description="Seconds at the peak.")
    counter: bool = Field(
        default=False,
        description="Count what the gateway takes: a Modbus device serves the next number on "
        "every read that covers the point (the first read gets 1); an MQTT device sends the next "
        "number in every message. Tests use it to count exactly which readings arrived.",
    )


class ProfileBase(Strict):
    id: str = Field(description="Profile id that gateway configs refer to.")
    name: str = Field(description="Human name of the sensor model.")
    manufacturer: str = Field(default="", description="Maker, if known.")
    kind: str = Field(description="Sensor kind, e.g. water_level, smoke, manhole, gas, camera.")
    interval_s: float = Field(gt=0, description="Expected reporting (or polling) interval.")
    rules: list[Rule] = Field(default_factory=list, description="Default detection rules.")
    sim: dict[str, SimBehaviour] = Field(default_factory=dict, description="Simulator per point.")

    def _check_rule_points(self, points: set[str]) -> None:
        for rule in self.rules:
            point = getattr(rule, "point", None)
            if point is not None and point not in points:
                raise ValueError(f"rule {rule.id!r} watches unknown point {point!r}")
        unknown = set(self.sim) - points
        if unknown:
            raise ValueError(f"sim names unknown points: {sorted(unknown)}")


class ModbusProfile(ProfileBase):
    protocol: Literal["modbus"]
    points: dict[str, ModbusPoint] = Field(description="Points by name.")

    @model_validator(mode="after")
    def _check(self) -> ModbusProfile:
        self._check_rule_points(set(self.points))
        return self


class MqttProfile(ProfileBase):
    protocol: Literal["mqtt"]
    topic: str = Field(description="Topic filter; '{device}' stands for the device's address.")
    points: dict[str, MqttPoint] = Field(description="Points by name.")
    events: bool = Field(default=False, description="Payloads are detection events (cameras).")

    @model_validator(mode="after")
    def _check(self) -> MqttProfile:
        self._check_rule_points(set(self.points))
        return self


Profile = Annotated[ModbusProfile | MqttProfile, Field(discriminator="protocol")]


def shown_points(profile: ModbusProfile | MqttProfile) -> dict[str, dict[str, object]]:
    """How a page shows each point of ``profile``: unit, decimals, whether it is on/off, and the
    limits of the threshold rules that watch it (a chart draws them as lines)."""
    out: dict[str, dict[str, object]] = {}
    points: dict[str, Point] = dict(profile.points)
    for name, point in sorted(points.items()):
        limits = [{"rule": r.id, "above": r.above, "below": r.below}
                  for r in profile.rules if isinstance(r, ThresholdRule) and r.point == name]  # fmt: skip
        out[name] = {"unit": point.unit, "decimals": point_decimals(point),
                     "onoff": onoff(point), "limits": limits}  # fmt: skip
    return out


class ProfileFile(Strict):
    """One YAML file holds one profile under the key ``profile``."""

    profile: Profile


def load_profile(path: Path | str) -> ModbusProfile | MqttProfile:
    return load_model(ProfileFile, path).profile


def load_profiles(root: Path | str) -> dict[str, ModbusProfile | MqttProfile]:
    """Every profile under ``root`` by id; all problems of all files reported together."""
    found: dict[str, ModbusProfile | MqttProfile] = {}
    problems: list[ConfigProblem] = []
    for path in iter_yaml_files(Path(root)):
        try:
            prof = load_profile(path)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        if prof.id in found:
            problems.append(
                ConfigProblem(str(path), None, ("profile", "id"), "duplicate id", prof.id)
            )
        found[prof.id] = prof
    if problems:
        raise ConfigError(problems)
    return found
