"""Device and gateway health: the pure core (no I/O, time is an argument).

The gateway reports what it measures itself (per device: answered or not, read counters, response
time; per gateway: CPU, memory, disk, outbox, uplink reconnects). The centre adds what only it can
see: a device that sends nothing (silent), a gateway whose death message came, a gateway clock that
is off. ``assess_device`` and ``assess_gateway`` turn those facts into a status and reasons a
maintenance crew can act on.

Expected interval: each device's profile ``interval_s``, which the gateway names in its birth
message (``Birth.device_info``); without it the device cannot be found silent, only offline.

Read success is judged on the device's recent polls as the gateway counts them
(``DeviceHealth.recent_ok``/``recent_failed``: the last 50, none older than 10 minutes), so a
past outage stops counting once the window has moved past it; from an older edge that sends only
lifetime counters, the lifetime ratio is judged and the reason says so. A device that has answered
its last ``Policy.recovered_polls`` (3) polls in a row is not failing reads, whatever the window
says: the window then tells an intermittent device, not one recovered from an outage.

``group_problems`` turns the assessments into one problem per root cause: a centre that is not
ingesting covers the devices and gateways it cannot judge; a gateway that is offline, never
connected or silent covers its devices; a bus that is down covers the devices on it; what is left
is listed device by device.

The centre's own faults (``centre.py``): while it is not ingesting (a time-series store or a
broker session down, ingestion behind), a device whose data stopped after that began is not
silent but ``unknown``, "no data for 23 s: the centre is not ingesting (...)": the centre cannot
tell its silence from its own. One that was silent before is silent still.

The reasons are sentences for a crew, in the language spoken now (``gridwatch/ground/i18n.py``):
the API sets it per request from Accept-Language, so the crew view and ``gridwatch health`` read
them in Chinese or English; statuses and kinds stay the API's words.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from device_registry.health.centre import Stall, clock
from gridwatch.ground.contract import RECOVERED_POLLS
from gridwatch.ground.i18n import N_, _


class Status(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    SILENT = "silent"
    """A device without data; a gateway connected but without a health report."""
    NEVER_CONNECTED = "never_connected"
    """A gateway registered by an installer that has not sent its birth message yet."""
    UNKNOWN = "unknown"
    """No recent data while the centre is not ingesting: it cannot tell a silence from its own."""


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
    recovered_polls: int = RECOVERED_POLLS
    """A device that has answered this many polls in a row is not "failing reads", whatever its
    window's ratio: after a bus outage the window still holds the outage for minutes, and the
    ratio is meant to find an intermittent device, not a recovered one."""
    battery_low: dict[str, float] = field(default_factory=lambda: {"%": 20.0, "V": 2.7, "": 20.0})
    """Battery below this, by unit."""
    signal_weak: dict[str, float] = field(default_factory=lambda: {"dBm": -105.0, "%": 20.0})
    clock_offset_ms: int = 5000
    outbox_depth: int = 10_000
    report_stale_intervals: float = 3.0
    """A connected gateway without a health report for this many report periods is silent..."""
    report_stale_min_s: float = 10.0
    """...and never sooner than this: a short period (tests, commissioning) would otherwise make
    a queue of a few seconds in the outbox look like a stopped agent."""


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
    gateway_connected_once: bool = True
    """False while its gateway has never connected (no birth, no death)."""
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


def assess_device(
    f: DeviceFacts, now: int, policy: Policy | None = None, centre: Stall | None = None
) -> Assessment:
    p = policy or Policy()
    rep = f.report or {}
    rate, why_rate = _success_rate(rep, f.clock_offset_ms)
    status, reasons, since = _liveness(f, rep, now, p, centre)
    failures = int(rep.get("consecutive_failures") or 0)
    if status is Status.ONLINE and failures:  # on its way to offline: show it now
        reasons.append(_("failing reads: the last {n} failed").format(n=failures))
    elif (rate is not None and rate < p.min_success_rate and status is Status.ONLINE
          and not _recovered(rep, p)):  # fmt: skip
        reasons.append(_("failing reads: {why}").format(why=why_rate))
    reasons += _levels(f.values, p)
    return Assessment(status, reasons, since, rate)


def _liveness(
    f: DeviceFacts, rep: dict[str, Any], now: int, p: Policy, centre: Stall | None = None
) -> tuple[Status, list[str], int | None]:
    if not f.gateway_connected_once:
        return Status.OFFLINE, [_("gateway {id} never connected").format(id=f.gateway)], None
    if not f.gateway_online:
        return (Status.OFFLINE, [_("gateway {id} offline").format(id=f.gateway)],
                f.gateway_died_at)  # fmt: skip
    failures = int(rep.get("consecutive_failures") or 0)
    if failures >= p.offline_failures or (rep.get("online") is False and failures):
        last_ok = rep.get("last_ok")
        since = None if last_ok is None else int(last_ok) - f.clock_offset_ms
        if f.push:
            quiet = (_("no data") if since is None
                     else _("no data for {s:.0f} s").format(s=(now - since) / 1000))  # fmt: skip
            expected = (_(" (expected every {s:g} s)").format(s=f.interval_s)
                        if f.interval_s else "")  # fmt: skip
            return Status.SILENT, [quiet + expected], since
        said = _("not answering: {n} consecutive failed reads").format(n=failures)
        return Status.OFFLINE, [said], since
    seen = f.last_seen
    if f.interval_s and seen is not None:
        silent_for = now - (seen - f.clock_offset_ms)
        limit = int(f.interval_s * 1000 * p.silent_after_intervals) + p.silent_grace_ms
        if silent_for > limit:
            last = seen - f.clock_offset_ms
            if _centre_blind(centre, last, limit):
                return Status.UNKNOWN, [_not_ingesting(silent_for, centre)], last
            reason = _("no data for {s:.0f} s").format(s=silent_for / 1000) + _(
                " (expected every {s:g} s)"
            ).format(s=f.interval_s)
            return Status.SILENT, [reason], last
    return Status.ONLINE, [], None


def _centre_blind(centre: Stall | None, last: int, limit: int) -> bool:
    """Whether the centre's stall hides what came after ``last``: it began before the silence
    would have been found. A silence found before it began stays a silence."""
    return centre is not None and last + limit >= centre.since


def _not_ingesting(quiet_ms: int, centre: Stall | None) -> str:
    assert centre is not None
    return _("no data for {s:.0f} s: the centre is not ingesting since {since} ({why})").format(
        s=quiet_ms / 1000, since=clock(centre.since), why=centre.why
    )


def _recovered(rep: dict[str, Any], p: Policy) -> bool:
    # an older edge does not count its answers in a row: the window alone decides
    return int(rep.get("consecutive_ok") or 0) >= p.recovered_polls


def _success_rate(rep: dict[str, Any], offset_ms: int = 0) -> tuple[float | None, str]:
    """The share of polls answered, and how to say it when it is too low."""
    if rep.get("recent_ok") is not None and rep.get("recent_failed") is not None:
        ok, failed = int(rep["recent_ok"]), int(rep["recent_failed"])
        n = ok + failed
        why = _("{failed} of the last {n} polls failed").format(failed=failed, n=n)
        if rep.get("last_failed") is not None:
            at = _clock(int(rep["last_failed"]) - offset_ms)
            why += _(", the last at {time}").format(time=at)
        return (None if n == 0 else ok / n), why
    # an edge older than the window sends only what it counted since it started
    ok, failed = int(rep.get("reads_ok") or 0), int(rep.get("reads_failed") or 0)
    if ok + failed == 0:
        return None, ""
    rate = ok / (ok + failed)
    return rate, _("{rate:.0%} succeed since the gateway started").format(rate=rate)


def _clock(ms: int) -> str:
    """A time of day for a crew on site: UTC, as the registry's logs and the CLI's times."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(ms / 1000))


def _levels(values: dict[str, tuple[Any, str]], p: Policy) -> list[str]:
    out = []
    for point, limits, what in (("battery", p.battery_low, N_("battery low")),
                                ("signal", p.signal_weak, N_("weak signal"))):  # fmt: skip
        value, unit = values.get(point, (None, ""))
        if isinstance(value, int | float) and not isinstance(value, bool):
            limit = limits.get(unit)
            if limit is not None and value < limit:
                out.append(f"{_(what)}: {value:g} {unit}".rstrip())
    return out


@dataclass(frozen=True)
class GatewayFacts:
    id: str
    online: bool
    last_seen: int
    """Centre clock of its latest message."""
    died_at: int | None = None
    report: dict[str, Any] | None = None
    """contract.GatewayHealth as JSON."""
    received_at: int | None = None
    """Centre clock when that report arrived."""
    report_interval_s: float = 30.0
    """Its health report period when the report does not name it (an older edge)."""
    connected_once: bool = True
    """False for a gateway registered by an installer that never sent a birth (nor a death)."""


def clock_offset_ms(report_ts: int | None, received_at: int | None) -> int:
    """Gateway clock minus centre clock; transport delay (milliseconds on a LAN) included."""
    if report_ts is None or received_at is None:
        return 0
    return report_ts - received_at


def assess_gateway(
    g: GatewayFacts, now: int, policy: Policy | None = None, centre: Stall | None = None
) -> Assessment:
    p = policy or Policy()
    if not g.connected_once:
        return Assessment(Status.NEVER_CONNECTED, [_(_COVERS[Status.NEVER_CONNECTED])])
    if not g.online:
        return Assessment(Status.OFFLINE, [_(_COVERS[Status.OFFLINE])], g.died_at)
    rep = g.report or {}
    interval = float(rep.get("interval_s") or g.report_interval_s)
    heard = g.received_at if g.received_at is not None else g.last_seen
    age = now - heard
    limit = int(max(interval * p.report_stale_intervals, p.report_stale_min_s) * 1000)
    if age > limit:
        if _centre_blind(centre, heard, limit):
            return Assessment(Status.UNKNOWN, [_not_ingesting(age, centre)], heard)
        # connected as far as the broker knows, yet its agent says nothing: stopped, hung, or
        # cut off in a way that did not fire its will
        why = (
            _("no health report")
            if g.received_at is None
            else _("no health report for {s:.0f} s").format(s=age / 1000)
        )
        said = _("connected, but {why} (expected every {s:g} s)").format(why=why, s=interval)
        return Assessment(Status.SILENT, [said], heard)
    reasons: list[str] = []
    offset = clock_offset_ms(rep.get("ts"), g.received_at)
    if abs(offset) > p.clock_offset_ms:
        reasons.append(_("clock off by {s:+.1f} s").format(s=offset / 1000))
    if int(rep.get("outbox_depth") or 0) > p.outbox_depth:
        reasons.append(_("outbox backlog: {n} messages").format(n=rep["outbox_depth"]))
    if int(rep.get("outbox_dropped") or 0) > 0:
        reasons.append(_("outbox dropped {n} messages").format(n=rep["outbox_dropped"]))
    return Assessment(Status.ONLINE, reasons)


Kind = Literal["centre", "gateway", "bus", "device"]


@dataclass(frozen=True)
class Problem:
    """One root cause and the devices it accounts for."""

    kind: Kind
    id: str
    """``centre``, the gateway id, ``gateway/bus``, or the device's registry id."""
    gateway: str
    status: str
    reason: str
    since: int | None = None
    devices: tuple[str, ...] = ()
    """Registry ids of the unhealthy devices this cause accounts for."""
    bus: str = ""
    address: str = ""
    district: str = ""
    grid: str = ""


# the words are translated where a reason is made, in the language of the request it serves
_COVERS = {Status.OFFLINE: N_("offline (death message)"),
           Status.NEVER_CONNECTED: N_("never connected")}  # fmt: skip
_DEVICES_ARE = {  # (one device, several)
    Status.OFFLINE: (N_("its device is stale"), N_("its {n} devices are stale")),
    Status.NEVER_CONNECTED: (N_("its device has never reported"),
                             N_("its {n} devices have never reported")),
    Status.SILENT: (N_("its device is not reported on"), N_("its {n} devices are not reported on")),
}  # fmt: skip
_NOT_ANSWERING = (N_("its device is not answering"), N_("its {n} devices are not answering"))


def group_problems(
    gateways: Sequence[tuple[GatewayFacts, Assessment]],
    devices: Sequence[tuple[DeviceFacts, Assessment]],
    centre: Stall | None = None,
) -> list[Problem]:
    """Root causes first (the centre, gateways, then buses), then each device no cause accounts
    for."""
    out: list[Problem] = []
    covered: set[str] = set()
    if centre is not None:
        out.append(_centre_problem(centre, gateways, devices))
        covered.update(out[0].devices)
    sick = [(f, a) for f, a in devices if not a.healthy and f.id not in covered]
    by_gw: dict[str, list[DeviceFacts]] = {}
    for f, _a in sick:
        by_gw.setdefault(f.gateway, []).append(f)
    for g, a in sorted(gateways, key=lambda ga: ga[0].id):
        if a.healthy or a.status is Status.UNKNOWN:  # the centre's problem names it
            continue
        mine = by_gw.get(g.id, []) if a.status is not Status.ONLINE else []
        reason = "; ".join(a.reasons)
        if a.status is not Status.ONLINE:
            covers = _COVERS.get(a.status)
            reason = _("gateway {id} {what}").format(id=g.id, what=_(covers) if covers else reason)
            if mine:
                reason += f": {_its(len(mine), _DEVICES_ARE[a.status])}"
        out.append(Problem("gateway", g.id, g.id, a.status.value, reason, a.since,
                           tuple(f.id for f in mine)))  # fmt: skip
        covered.update(f.id for f in mine)
    for g, a in sorted(gateways, key=lambda ga: ga[0].id):
        if a.status is Status.ONLINE:
            mine = [f for f in by_gw.get(g.id, []) if f.id not in covered]
            out += _bus_problems(g, mine, covered)
    rest = sorted((fa for fa in sick if fa[0].id not in covered),
                  key=lambda fa: (fa[0].district, fa[0].grid, fa[0].id))  # fmt: skip
    out += [Problem("device", f.id, f.gateway, a.status.value, "; ".join(a.reasons), a.since,
                    (f.id,), district=f.district, grid=f.grid) for f, a in rest]  # fmt: skip
    return out


def _centre_problem(
    centre: Stall,
    gateways: Sequence[tuple[GatewayFacts, Assessment]],
    devices: Sequence[tuple[DeviceFacts, Assessment]],
) -> Problem:
    blind = sorted(f.id for f, a in devices if a.status is Status.UNKNOWN)
    gws = sum(a.status is Status.UNKNOWN for _g, a in gateways)
    reason = _("the centre is not ingesting since {since}: {why}").format(
        since=clock(centre.since), why=centre.why
    )
    counts = [(_(one) if n == 1 else _(more).format(n=n))
              for n, one, more in ((len(blind), N_("1 device"), N_("{n} devices")),
                                   (gws, N_("1 gateway"), N_("{n} gateways"))) if n]  # fmt: skip
    if counts:
        reason += _("; {counts} without recent data cannot be judged").format(
            counts=_(" and ").join(counts)
        )
    return Problem("centre", "centre", "", "not_ingesting", reason, centre.since, tuple(blind))


def _bus_problems(g: GatewayFacts, sick: list[DeviceFacts], covered: set[str]) -> list[Problem]:
    """A bus the edge reports down; or one whose every device (two or more) has stopped
    answering while the edge still reaches the bus (a cut line behind a converter)."""
    out = []
    offset = clock_offset_ms((g.report or {}).get("ts"), g.received_at)
    for bus in (g.report or {}).get("buses") or []:
        names = set(bus.get("devices") or [])
        on_bus = [f for f in sick if f.device in names]
        where = _("bus {id}").format(id=bus.get("bus")) + (
            f" ({bus['address']})" if bus.get("address") else ""
        )
        since = bus.get("down_since")
        if bus.get("up") is False:
            reason = _("{where} on gateway {id} unreachable").format(where=where, id=g.id)
            if on_bus:
                reason += f": {_its(len(on_bus), _NOT_ANSWERING)}"
        else:
            failing = [f for f in on_bus if _failing(f)]
            if len(names) < 2 or len(failing) < len(names):
                continue  # one device alone, or some still answer: the devices are the problem
            on_bus, since = failing, None
            reason = _("{where} on gateway {id}: none of its {n} devices answers").format(
                where=where, id=g.id, n=len(names)
            )
        out.append(Problem("bus", f"{g.id}/{bus.get('bus')}", g.id, Status.OFFLINE.value, reason,
                           None if since is None else int(since) - offset,
                           tuple(f.id for f in on_bus), bus=str(bus.get("bus") or ""),
                           address=str(bus.get("address") or "")))  # fmt: skip
        covered.update(f.id for f in on_bus)
    return out


def _failing(f: DeviceFacts) -> bool:
    return bool(f.report) and int((f.report or {}).get("consecutive_failures") or 0) > 0


def _its(n: int, said: tuple[str, str]) -> str:
    return _(said[0]) if n == 1 else _(said[1]).format(n=n)
