"""A district's gateways as the wire contract sees them: the pure core of ``gridwatch sim district``.

``plan(opts)`` lays ``opts.gateways`` gateways of ``opts.devices`` devices over Xuhui's streets
and grid cells (``gridwatch.top.sim.xuhui``); ``GatewayScript`` then says, for one gateway, every
message it sends and when: a Birth (with ``device_info``) and a Death for each connection,
telemetry batches of each device's readings at its interval, alert transitions from the scripted
storm, and health reports. No I/O and no clock: time is seconds since the run's start ``t0_ms``,
and everything random comes from ``random.Random`` seeded with the seed and the gateway's id, so
the same seed and start give the same bytes, whichever process or shard runs the gateway, in
whatever order the gateways are stepped (``districtrun`` is the shell that sends them).

What the gateways do, as an edge would:

- each device is read every ``interval_s`` (phases spread evenly over the interval), and the
  gateway sends one batch per ``batch_s`` of the readings taken in it;
- the storm reaches the streets one after another (``xuhui.STORM_PATH``), ``storm_step_s``
  apart: the water levels of the street rise over ``storm_ramp_s``, hold ``storm_hold_s`` and
  recede. On a seeded share of the water-level sensors (``flood_share``) the level crosses the
  profile's warning line (2.5 m, hysteresis 0.2 m) and the gateway raises ``level_high``
  (040401, major), and clears it as the water goes down;
- ``deaths`` gateways (seeded) lose their connection once, at a seeded time, for ``down_s``:
  the broker publishes their Death (the will); they come back with a new session and Birth and
  send what they read meanwhile as ``historical`` readings.

Message ids are ``<seed>.<t0_ms>:<gateway>:<stream letter><seq>``: unique per run (the centre
dedupes by id, so a second run against the same centre must not repeat the first one's ids) and
the same for the same seed and start. Sessions start at ``t0_ms`` and count the script's
connections, so a later run's Birth is newer than an earlier run's Death. Only a Birth's ``ts``
(when it connected) and a reconnect the script did not ask for (a broker restart) depend on the
run; every telemetry batch, alert transition and health report is the script's.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from gridwatch.top.sim.xuhui import CELLS_PER_STREET, DISTRICT, STORM_PATH, STREETS, grid_cell

SOFTWARE = "gridwatch sim district"


@dataclass(frozen=True)
class PointSpec:
    name: str
    unit: str = ""
    base: float = 0.0
    noise: float = 0.0
    kind: Literal["float", "bool", "counter"] = "float"


@dataclass(frozen=True)
class Kind:
    """A kind of device: a shipped profile's id and the points it reports."""

    short: str
    """Prefix of its device ids."""
    profile: str
    points: tuple[PointSpec, ...]
    weight: float
    """Its share of a gateway's devices."""


LEVEL = "level"
LEVEL_LINE_M = 2.5
LEVEL_HYSTERESIS_M = 0.2
LEVEL_BASE_M = 1.2

KINDS: tuple[Kind, ...] = (
    Kind("wl", "water-level-ultrasonic", (
        PointSpec(LEVEL, "m", LEVEL_BASE_M, 0.01), PointSpec("loop_current", "mA", 5.9, 0.01),
        PointSpec("counter", kind="counter"),
    ), 0.3),
    Kind("mh", "manhole-tilt", (
        PointSpec("tilt_x", "deg", 0.4, 0.05), PointSpec("tilt_y", "deg", -0.2, 0.05),
        PointSpec("cover_open", kind="bool"), PointSpec("tamper", kind="bool"),
        PointSpec("battery", "V", 3.45, 0.005),
    ), 0.25),
    Kind("sd", "smoke-detector-modbus", (
        PointSpec("obscuration", "%/m", 0.3, 0.05), PointSpec("alarm", kind="bool"),
        PointSpec("fault", kind="bool"), PointSpec("battery", "V", 3.0),
        PointSpec("sounder", kind="bool"),
    ), 0.25),
    Kind("gd", "gas-detector", (
        PointSpec("lel", "%LEL", 1.0, 0.3), PointSpec("h2s", "ppm", 0.5, 0.1),
        PointSpec("alarm1", kind="bool"), PointSpec("alarm2", kind="bool"),
        PointSpec("sensor_fault", kind="bool"),
    ), 0.2),
)  # fmt: skip
"""Points and names as in the shipped profiles (firmware_configs/profiles); base and noise as
their ``sim:`` blocks. 4.4 points per device on average (a water-level sensor has three)."""


@dataclass(frozen=True)
class DistrictOptions:
    seed: int = 1
    gateways: int = 20
    devices: int = 100
    """Per gateway."""
    interval_s: float = 10.0
    batch_s: float = 1.0
    health_s: float = 30.0
    ramp_s: float = 0.0
    """Gateways join spread over this long (``i * ramp_s / gateways``), not all at once."""
    storm_at_s: float = 20.0
    storm_step_s: float = 10.0
    storm_ramp_s: float = 10.0
    storm_hold_s: float = 20.0
    flood_share: float = 0.2
    """Of the water-level sensors of a street the storm reaches, the share whose level crosses
    the warning line (the others rise less)."""
    deaths: int = 0
    """Gateways that lose their connection once."""
    death_window_s: tuple[float, float] = (10.0, 60.0)
    """When in the run they do (seeded, within this window)."""
    down_s: float = 10.0

    def __post_init__(self) -> None:
        problems = [
            f"{name} must be more than 0 (got {value})"
            for name, value in (("gateways", self.gateways), ("devices", self.devices),
                                ("interval_s", self.interval_s), ("batch_s", self.batch_s),
                                ("health_s", self.health_s), ("down_s", self.down_s))
            if value <= 0
        ]  # fmt: skip
        if not 0 <= self.deaths <= self.gateways:
            problems.append(f"deaths must be 0..gateways ({self.gateways}), got {self.deaths}")
        if not 0 <= self.flood_share <= 1:
            problems.append(f"flood_share must be 0..1, got {self.flood_share}")
        if problems:
            raise ValueError("district simulator: " + "; ".join(problems))


@dataclass(frozen=True)
class DevicePlan:
    id: str
    kind: Kind
    phase_s: float
    floods: bool
    """A water-level sensor whose level crosses the warning line in the storm."""


@dataclass(frozen=True)
class GatewayPlan:
    index: int
    id: str
    street: str
    """Street code."""
    street_name: str
    grid: str
    start_s: float
    devices: tuple[DevicePlan, ...]
    outage: tuple[float, float] | None
    """(lost at, back at) in run seconds, or None."""

    @property
    def location(self) -> dict[str, Any]:
        return {"district": DISTRICT, "street": self.street_name, "grid": self.grid,
                "lat": None, "lon": None}  # fmt: skip


@dataclass(frozen=True)
class District:
    opts: DistrictOptions
    gateways: tuple[GatewayPlan, ...]

    def storm_reaches(self, street: str) -> float:
        """Run second the storm starts over ``street``."""
        return self.opts.storm_at_s + STORM_PATH.index(street) * self.opts.storm_step_s

    def rise(self, street: str, t: float) -> float:
        """0..1: how far the water of ``street`` has risen at ``t``."""
        o = self.opts
        dt = t - self.storm_reaches(street)
        if dt < 0:
            return 0.0
        if dt < o.storm_ramp_s:
            return dt / o.storm_ramp_s
        dt -= o.storm_ramp_s
        if dt < o.storm_hold_s:
            return 1.0
        return max(0.0, 1.0 - (dt - o.storm_hold_s) / o.storm_ramp_s)


def plan(opts: DistrictOptions) -> District:
    """The district's gateways: the same for the same options (``opts.seed`` included)."""
    rng = random.Random(f"district:{opts.seed}")
    per_street: dict[str, int] = {}
    gateways = []
    outages = _outages(opts, rng)
    for i in range(opts.gateways):
        street = STREETS[i % len(STREETS)]
        n = per_street[street.code] = per_street.get(street.code, 0) + 1
        gw = f"xh{street.code[6:]}-{n:03d}"
        devices = tuple(_device(opts, rng, j) for j in range(opts.devices))
        gateways.append(GatewayPlan(
            index=i, id=gw, street=street.code, street_name=street.name,
            grid=grid_cell(street, rng.randrange(CELLS_PER_STREET) + 1),
            start_s=i * opts.ramp_s / opts.gateways, devices=devices, outage=outages.get(i),
        ))  # fmt: skip
    return District(opts, tuple(gateways))


def _device(opts: DistrictOptions, rng: random.Random, j: int) -> DevicePlan:
    kind = rng.choices(KINDS, weights=[k.weight for k in KINDS])[0]
    floods = kind.short == "wl" and rng.random() < opts.flood_share
    phase = (j + 0.5) * opts.interval_s / opts.devices
    return DevicePlan(f"{kind.short}-{j + 1:03d}", kind, phase, floods)


def _outages(opts: DistrictOptions, rng: random.Random) -> dict[int, tuple[float, float]]:
    lo, hi = opts.death_window_s
    out = {}
    for i in sorted(rng.sample(range(opts.gateways), opts.deaths)):
        at = round(rng.uniform(lo, hi), 3)
        out[i] = (at, at + opts.down_s)
    return out


@dataclass(frozen=True)
class Out:
    """One message of a gateway, due at ``at_s`` run seconds."""

    at_s: float
    leaf: str
    """Topic leaf: telemetry, alert or health."""
    seq: int
    payload: bytes
    readings: int = 0
    alert: tuple[str, str] | None = None
    """(alert_id, state) of an alert transition."""


@dataclass
class _Device:
    plan: DevicePlan
    count: int = 0
    alert_id: str | None = None
    peak: float = 0.0
    raised_at: int = 0


@dataclass
class GatewayScript:
    """Everything one gateway sends, in order: ``step(t)`` returns what is due by ``t``."""

    district: District
    gw: GatewayPlan
    t0_ms: int
    session: int = 0
    seqs: dict[str, int] = field(default_factory=lambda: {"telemetry": 0, "alert": 0,
                                                          "health": 0})  # fmt: skip
    connects: int = 0
    _unscripted: int = 0

    def __post_init__(self) -> None:
        o = self.district.opts
        self.rng = random.Random(f"gateway:{o.seed}:{self.gw.id}")
        self.devices = [_Device(d) for d in self.gw.devices]
        self._due = [(self.gw.start_s + d.phase_s, j) for j, d in enumerate(self.gw.devices)]
        heapq.heapify(self._due)
        self._tick = self.gw.start_s + o.batch_s
        # health reports spread over their period, each gateway at its own phase
        self._health = self.gw.start_s + o.health_s * (0.5 + self.rng.random()) / 2
        self._run = f"{o.seed}.{self.t0_ms}"

    # --- connections ------------------------------------------------------------------------

    def connect(self, t: float) -> tuple[bytes, bytes]:
        """A new connection at run second ``t``: its Birth (``ts`` is ``t``) and its Death (the
        will). A reconnect the script did not ask for (the broker went away) takes a session of
        its own too."""
        if self.connects and self.session_at(t) == self.session:
            self._unscripted += 1
        self.connects += 1
        self.session = self.session_at(t)
        birth = {"v": 1, "kind": "birth", "gateway": self.gw.id, "session": self.session,
                 "ts": self.ms(t), "software": SOFTWARE, "config_version": 0,
                 "devices": [d.id for d in self.gw.devices],
                 "device_info": [{"device": d.id, "profile": d.kind.profile,
                                  "interval_s": self.district.opts.interval_s, "firmware": "",
                                  "location": self.gw.location} for d in self.gw.devices]}  # fmt: skip
        death = {"v": 1, "kind": "death", "gateway": self.gw.id, "session": self.session}
        return orjson.dumps(birth), orjson.dumps(death)

    def session_at(self, t: float) -> int:
        """The session a message made at ``t`` carries: the script's connections up to ``t``
        (a function of the script, not of when the connection came back)."""
        o = self.gw.outage
        return self.t0_ms + self._unscripted + (1 if o is not None and t >= o[1] else 0)

    def ms(self, t: float) -> int:
        return self.t0_ms + round(t * 1000)

    def down(self, t: float) -> bool:
        """Is the gateway's connection down (scripted) at ``t``?"""
        o = self.gw.outage
        return o is not None and o[0] <= t < o[1]

    # --- what is due --------------------------------------------------------------------------

    def due(self) -> float:
        """Run second of the next message."""
        return min(self._tick, self._health)

    def step(self, t: float) -> list[Out]:
        """Every message due by ``t``, in the order sent."""
        out: list[Out] = []
        while self.due() <= t:
            if self._tick <= self._health:
                out.extend(self._batch(self._tick))
                self._tick += self.district.opts.batch_s
            else:
                out.append(self._health_report(self._health))
                self._health += self.district.opts.health_s
        return out

    def _next(self, stream: str) -> int:
        self.seqs[stream] += 1
        return self.seqs[stream]

    def _head(self, stream: str, t: float) -> dict[str, Any]:
        seq = self._next(stream)
        return {"v": 1, "kind": stream, "id": f"{self._run}:{self.gw.id}:{stream[0]}{seq}",
                "gateway": self.gw.id, "seq": seq, "session": self.session_at(t)}  # fmt: skip

    def _batch(self, tick: float) -> list[Out]:
        readings: list[dict[str, Any]] = []
        alerts: list[Out] = []
        interval = self.district.opts.interval_s
        while self._due and self._due[0][0] <= tick:
            at, j = heapq.heappop(self._due)
            heapq.heappush(self._due, (at + interval, j))
            alert = self._read(self.devices[j], at, readings)
            if alert is not None:
                alerts.append(alert)
        out = []
        if readings:
            doc = self._head("telemetry", tick)
            doc["readings"] = readings
            out.append(Out(tick, "telemetry", doc["seq"], orjson.dumps(doc), len(readings)))
        return out + alerts

    def _read(self, dev: _Device, at: float, readings: list[dict[str, Any]]) -> Out | None:
        """Append the device's readings taken at ``at``; its alert transition, if any."""
        ts = self.ms(at)
        historical = self.down(at)
        level: float | None = None
        for p in dev.plan.kind.points:
            value: float | bool
            if p.kind == "counter":
                dev.count += 1
                value = dev.count
            elif p.kind == "bool":
                value = False
            else:
                value = p.base + (self.rng.uniform(-p.noise, p.noise) if p.noise else 0.0)
                if p.name == LEVEL:
                    value += self._storm(dev, at)
                    level = value = round(value, 3)
                else:
                    value = round(value, 3)
            readings.append({"device": dev.plan.id, "point": p.name, "value": value,
                             "unit": p.unit, "ts": ts, "quality": "good",
                             "historical": historical})  # fmt: skip
        return None if level is None else self._level_alert(dev, level, at)

    def _storm(self, dev: _Device, at: float) -> float:
        rise = self.district.rise(self.gw.street, at)
        # a flooding sensor peaks 0.6 m over the line, the others 0.6 m under it
        peak = LEVEL_LINE_M - LEVEL_BASE_M + (0.6 if dev.plan.floods else -0.6)
        return rise * peak

    def _level_alert(self, dev: _Device, level: float, at: float) -> Out | None:
        ts = self.ms(at)
        if dev.alert_id is None and level > LEVEL_LINE_M:
            dev.alert_id = f"{self.gw.id}:{dev.plan.id}:level_high:{ts}"
            dev.raised_at, dev.peak = ts, level
            state = "raised"
        elif dev.alert_id is not None and level < LEVEL_LINE_M - LEVEL_HYSTERESIS_M:
            state = "cleared"
        else:
            if dev.alert_id is not None:
                dev.peak = max(dev.peak, level)
            return None
        doc = self._head("alert", at)
        doc.update(
            alert_id=dev.alert_id, state=state, rule="level_high", category="040401",
            severity="major", device=dev.plan.id, point=LEVEL, location=self.gw.location,
            value=level, peak=max(dev.peak, level), threshold=LEVEL_LINE_M, unit="m",
            message="Water level above warning line" if state == "raised"
            else "Water level back below warning line",
            raised_at=dev.raised_at, ts=ts,
        )  # fmt: skip
        out = Out(at, "alert", doc["seq"], orjson.dumps(doc), alert=(dev.alert_id, state))
        if state == "cleared":
            dev.alert_id = None
        return out

    def _health_report(self, at: float) -> Out:
        o = self.district.opts
        ts = self.ms(at)
        doc = self._head("health", at)
        polls = max(0, int((at - self.gw.start_s) / o.interval_s))
        doc.update(
            ts=ts, interval_s=o.health_s, cpu_percent=round(self.rng.uniform(2, 9), 1),
            memory_mb=round(self.rng.uniform(55, 70), 1), disk_free_mb=51200.0,
            outbox_depth=0, outbox_bytes=0, outbox_dropped=0, outbox_unacked=0,
            uplink_reconnects=self.session_at(at) - self.t0_ms,
            devices=[{"device": d.id, "online": True, "reads_ok": polls, "reads_failed": 0,
                      "consecutive_failures": 0, "response_ms": 4.0,
                      "last_ok": ts if polls else None, "polls_skipped": 0,
                      "recent_ok": min(polls, 50), "recent_failed": 0,
                      "consecutive_ok": polls} for d in self.gw.devices],
            buses=[{"bus": "cabinet-tcp", "type": "modbus_tcp",
                    "address": f"192.0.2.{self.gw.index % 250 + 1}:502", "up": True,
                    "devices": [d.id for d in self.gw.devices]}],
        )  # fmt: skip
        return Out(at, "health", doc["seq"], orjson.dumps(doc))
