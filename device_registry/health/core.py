"""Device and gateway health: the pure core (no I/O, time is an argument).

The gateway reports what it measures itself (per device: answered or not, read counters, response
time; per gateway: CPU, memory, disk, outbox, uplink reconnects). The centre adds what only it can
see: a device that sends nothing (silent), a gateway whose death message came, a gateway clock that
is off. ``assess_device`` and ``assess_gateway`` turn those facts into a status and reasons a
maintenance crew can act on.

Expected interval: each device's profile ``interval_s``, which the gateway names in its birth
message (``Birth.device_info``); without it the device cannot be found silent, only offline.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class Status(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    SILENT = "silent"


@dataclass(frozen=True)
class Policy:
    """Thresholds, as data; the defaults suit the shipped profiles."""

    silent_after_intervals: float = 2.0
    """A device is silent after this many expected intervals without data: one missed poll is
    jitter, two are a pattern."""
    silent_grace_ms: int = 1000
    """Added to that, for batching and transport delay."""
    offline_failures: int = 3
    """Consecutive failed reads that make a device offline (as the edge's offline rule)."""
    min_success_rate: float = 0.9
    battery_low: dict[str, float] = field(default_factory=lambda: {"%": 20.0, "V": 2.7, "": 20.0})
    """Battery below this, by unit."""
    signal_weak: dict[str, float] = field(default_factory=lambda: {"dBm": -105.0, "%": 20.0})
    clock_offset_ms: int = 5000
    outbox_depth: int = 10_000
    report_stale_intervals: float = 3.0
    """A gateway health report older than this many report periods is a finding."""


@dataclass(frozen=True)
class DeviceFacts:
    """What the registry knows about one device."""

    id: str
    gateway: str
    device: str
    district: str = ""
    grid: str = ""
    profile: str = ""
    interval_s: float | None = None
    push: bool = False
    """The device sends on its own (MQTT): a gateway's failed read of it is a silence."""
    firmware: str = ""
    last_seen: int | None = None
    """Gateway-clock epoch ms of its newest reading."""
    first_seen: int = 0
    gateway_online: bool = True
    gateway_died_at: int | None = None
    clock_offset_ms: int = 0
    """Gateway clock minus centre clock, to bring ``last_seen`` onto the centre's clock."""
    report: dict[str, Any] | None = None
    """The device's part of the gateway's latest health report (contract.DeviceHealth)."""
    values: dict[str, tuple[Any, str]] = field(default_factory=dict)
    """Point -> (value, unit) of its latest readings; battery and signal are looked up here."""


@dataclass(frozen=True)
class Assessment:
    status: Status
    reasons: list[str]
    since: int | None = None
    """When the current trouble began (offline since, silent since), centre clock."""
    success_rate: float | None = None

    @property
    def healthy(self) -> bool:
        return self.status is Status.ONLINE and not self.reasons


def assess_device(f: DeviceFacts, now: int, policy: Policy | None = None) -> Assessment:
    p = policy or Policy()
    rep = f.report or {}
    rate = _success_rate(rep)
    status, reasons, since = _liveness(f, rep, now, p)
    failures = int(rep.get("consecutive_failures") or 0)
    if status is Status.ONLINE and failures:  # on its way to offline: show it now
        reasons.append(f"failing reads: the last {failures} failed")
    elif rate is not None and rate < p.min_success_rate and status is Status.ONLINE:
        reasons.append(f"failing reads: {rate:.0%} succeed")
    reasons += _levels(f.values, p)
    return Assessment(status, reasons, since, rate)


def _liveness(
    f: DeviceFacts, rep: dict[str, Any], now: int, p: Policy
) -> tuple[Status, list[str], int | None]:
    if not f.gateway_online:
        return Status.OFFLINE, [f"gateway {f.gateway} offline"], f.gateway_died_at
    failures = int(rep.get("consecutive_failures") or 0)
    if failures >= p.offline_failures or (rep.get("online") is False and failures):
        last_ok = rep.get("last_ok")
        since = None if last_ok is None else int(last_ok) - f.clock_offset_ms
        if f.push:
            quiet = "no data" if since is None else f"no data for {(now - since) / 1000:.0f} s"
            expected = f" (expected every {f.interval_s:g} s)" if f.interval_s else ""
            return Status.SILENT, [quiet + expected], since
        return Status.OFFLINE, [f"not answering: {failures} consecutive failed reads"], since
    seen = f.last_seen
    if f.interval_s and seen is not None:
        silent_for = now - (seen - f.clock_offset_ms)
        limit = int(f.interval_s * 1000 * p.silent_after_intervals) + p.silent_grace_ms
        if silent_for > limit:
            reason = f"no data for {silent_for / 1000:.0f} s (expected every {f.interval_s:g} s)"
            return Status.SILENT, [reason], seen - f.clock_offset_ms
    return Status.ONLINE, [], None


def _success_rate(rep: dict[str, Any]) -> float | None:
    ok, failed = int(rep.get("reads_ok") or 0), int(rep.get("reads_failed") or 0)
    return None if ok + failed == 0 else ok / (ok + failed)


def _levels(values: dict[str, tuple[Any, str]], p: Policy) -> list[str]:
    out = []
    for point, limits, what in (("battery", p.battery_low, "battery low"),
                                ("signal", p.signal_weak, "weak signal")):  # fmt: skip
        value, unit = values.get(point, (None, ""))
        if isinstance(value, int | float) and not isinstance(value, bool):
            limit = limits.get(unit)
            if limit is not None and value < limit:
                out.append(f"{what}: {value:g} {unit}".rstrip())
    return out


@dataclass(frozen=True)
class GatewayFacts:
    id: str
    online: bool
    last_seen: int
    died_at: int | None = None
    report: dict[str, Any] | None = None
    """contract.GatewayHealth as JSON."""
    received_at: int | None = None
    """Centre clock when that report arrived."""
    report_interval_s: float = 30.0


def clock_offset_ms(report_ts: int | None, received_at: int | None) -> int:
    """Gateway clock minus centre clock; transport delay (milliseconds on a LAN) included."""
    if report_ts is None or received_at is None:
        return 0
    return report_ts - received_at


def assess_gateway(g: GatewayFacts, now: int, policy: Policy | None = None) -> Assessment:
    p = policy or Policy()
    if not g.online:
        return Assessment(Status.OFFLINE, ["offline (death message)"], g.died_at)
    rep = g.report or {}
    reasons: list[str] = []
    offset = clock_offset_ms(rep.get("ts"), g.received_at)
    if abs(offset) > p.clock_offset_ms:
        reasons.append(f"clock off by {offset / 1000:+.1f} s")
    if int(rep.get("outbox_depth") or 0) > p.outbox_depth:
        reasons.append(f"outbox backlog: {rep['outbox_depth']} messages")
    if int(rep.get("outbox_dropped") or 0) > 0:
        reasons.append(f"outbox dropped {rep['outbox_dropped']} messages")
    if g.received_at is not None:
        age = now - g.received_at
        if age > g.report_interval_s * 1000 * p.report_stale_intervals:
            reasons.append(f"no health report for {age / 1000:.0f} s")
    return Assessment(Status.ONLINE, reasons)
