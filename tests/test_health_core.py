"""The health core: status and reasons from facts, with a fake clock. Tables."""

from __future__ import annotations

import io
from typing import Any

import pytest

from device_registry.health.core import (
    Assessment,
    DeviceFacts,
    GatewayFacts,
    Status,
    assess_device,
    assess_gateway,
    group_problems,
)
from drivers.health import CHANGES, BusState, DeviceStats
from gridwatch.top import healthcli

NOW = 1_700_000_000_000


def facts(**kw: Any) -> DeviceFacts:
    base: dict[str, Any] = dict(id="gw1:d1", gateway="gw1", device="d1", interval_s=2.0,
                                last_seen=NOW - 1000)  # fmt: skip
    base.update(kw)
    return DeviceFacts(**base)


def report(ok: int = 100, failed: int = 0, consecutive: int = 0, online: bool = True,
           last_ok: int | None = NOW - 1000, recent: tuple[int, int] | None = None,
           in_a_row: int | None = None, last_failed: int | None = None,
           ) -> dict[str, Any]:  # fmt: skip
    rep: dict[str, Any] = {"device": "d1", "online": online, "reads_ok": ok,
                           "reads_failed": failed, "consecutive_failures": consecutive,
                           "last_ok": last_ok}  # fmt: skip
    if recent is not None:
        rep["recent_ok"], rep["recent_failed"] = recent
    if in_a_row is not None:
        rep["consecutive_ok"] = in_a_row
    if last_failed is not None:
        rep["last_failed"] = last_failed
    return rep


# 2023-11-14 22:13:20 UTC
T_22_13_20 = 1_700_000_000_000


@pytest.mark.parametrize(
    ("name", "f", "status", "reason"),
    [
        ("answering, recent data", facts(report=report()), Status.ONLINE, None),
        (
            "three failed reads",
            facts(report=report(consecutive=3, online=False)),
            Status.OFFLINE,
            "3 consecutive failed reads",
        ),
        (
            "one failed read: not offline yet, but unhealthy",
            facts(report=report(consecutive=1)),
            Status.ONLINE,
            "the last 1 failed",
        ),
        (
            "a push device the gateway hears nothing from: silent, not offline",
            facts(push=True, report=report(consecutive=4, online=False, last_ok=NOW - 6000)),
            Status.SILENT,
            "no data for 6 s (expected every 2 s)",
        ),
        (
            "gateway dead",
            facts(gateway_online=False, gateway_died_at=NOW - 5000),
            Status.OFFLINE,
            "gateway gw1 offline",
        ),
        (
            "no data for 5 s, expected every 2 s",
            facts(last_seen=NOW - 5001),
            Status.SILENT,
            "no data for 5 s (expected every 2 s)",
        ),
        (
            "4.9 s: within two intervals plus grace",
            facts(last_seen=NOW - 4900),
            Status.ONLINE,
            None,
        ),
        (
            "gateway clock 10 s ahead: not silent",
            facts(last_seen=NOW + 9000, clock_offset_ms=10_000),
            Status.ONLINE,
            None,
        ),
        (
            "no interval known: never silent",
            facts(interval_s=None, last_seen=NOW - 10**7),
            Status.ONLINE,
            None,
        ),
        (
            "an older edge (lifetime counters only): one read in five fails",
            facts(report=report(ok=80, failed=20)),
            Status.ONLINE,
            "failing reads: 80% succeed since the gateway started",
        ),
        (
            "a past outage outside the window: 65 % lifetime, every recent poll answered",
            facts(report=report(ok=130, failed=70, recent=(50, 0))),
            Status.ONLINE,
            None,
        ),
        (
            "12 of the last 50 polls failed",
            facts(report=report(ok=10_000, failed=12, recent=(38, 12))),
            Status.ONLINE,
            "failing reads: 12 of the last 50 polls failed",
        ),
        (
            "recovered from a bus outage: 48 of 50 failed, the last 3 answered in a row",
            facts(report=report(recent=(2, 48), in_a_row=3)),
            Status.ONLINE,
            None,
        ),
        (
            "two answers in a row are not yet a recovery",
            facts(report=report(recent=(2, 48), in_a_row=2)),
            Status.ONLINE,
            "failing reads: 48 of the last 50 polls failed",
        ),
        (
            "intermittent: fails every few polls, the window fires and says when the last was",
            facts(report=report(recent=(38, 12), in_a_row=1, last_failed=T_22_13_20 - 4000)),
            Status.ONLINE,
            "failing reads: 12 of the last 50 polls failed, the last at 22:13:16 UTC",
        ),
        (
            "the last failure's time on the centre clock (gateway 10 s ahead)",
            facts(
                clock_offset_ms=10_000,
                last_seen=NOW + 9000,
                report=report(recent=(38, 12), in_a_row=0, last_failed=T_22_13_20 + 6000),
            ),
            Status.ONLINE,
            "the last at 22:13:16 UTC",
        ),
        (
            "an older edge without answers in a row: the window alone decides",
            facts(report=report(recent=(2, 48))),
            Status.ONLINE,
            "failing reads: 48 of the last 50 polls failed",
        ),
        (
            "a window of a slow device: 2 of 8 in the last 10 minutes",
            facts(report=report(recent=(6, 2))),
            Status.ONLINE,
            "failing reads: 2 of the last 8 polls failed",
        ),
        (
            "its gateway never connected",
            facts(gateway_online=False, gateway_connected_once=False),
            Status.OFFLINE,
            "gateway gw1 never connected",
        ),
        (
            "battery low (V)",
            facts(values={"battery": (2.4, "V")}),
            Status.ONLINE,
            "battery low: 2.4 V",
        ),
        ("battery fine", facts(values={"battery": (3.0, "V")}), Status.ONLINE, None),
        (
            "battery low (%)",
            facts(values={"battery": (12, "%")}),
            Status.ONLINE,
            "battery low: 12 %",
        ),
        (
            "weak signal",
            facts(values={"signal": (-110, "dBm")}),
            Status.ONLINE,
            "weak signal: -110 dBm",
        ),
    ],
)
def test_device(name: str, f: DeviceFacts, status: Status, reason: str | None) -> None:
    a = assess_device(f, NOW)
    assert a.status is status, name
    if reason is None:
        assert a.reasons == [] and a.healthy, name
    else:
        assert any(reason in r for r in a.reasons), (name, a.reasons)
        assert not a.healthy


def test_offline_since_is_the_last_good_read_on_the_centre_clock() -> None:
    a = assess_device(facts(report=report(consecutive=5, last_ok=NOW - 7000),
                            clock_offset_ms=2000), NOW)  # fmt: skip
    assert a.since == NOW - 9000


@pytest.mark.parametrize(
    ("name", "g", "status", "reason"),
    [
        (
            "fine",
            GatewayFacts("gw1", True, NOW, report={"ts": NOW - 20}, received_at=NOW - 10),
            Status.ONLINE,
            None,
        ),
        ("dead", GatewayFacts("gw1", False, NOW, died_at=NOW - 1), Status.OFFLINE, "offline"),
        (
            "registered, never connected: not a death message",
            GatewayFacts("gw1", False, NOW, connected_once=False),
            Status.NEVER_CONNECTED,
            "never connected",
        ),
        (
            "online, its agent silent 124 s (reports every 30 s): its own state",
            GatewayFacts(
                "gw1",
                True,
                NOW - 124_000,
                report={"ts": NOW - 124_000, "interval_s": 30},
                received_at=NOW - 124_000,
            ),
            Status.SILENT,
            "connected, but no health report for 124 s (expected every 30 s)",
        ),
        (
            "the report names its own period: 5 s, silent after 15 s",
            GatewayFacts(
                "gw1",
                True,
                NOW,
                report={"ts": NOW - 16_000, "interval_s": 5},
                received_at=NOW - 16_000,
            ),
            Status.SILENT,
            "no health report for 16 s (expected every 5 s)",
        ),
        (
            "a short period: never silent before 10 s",
            GatewayFacts(
                "gw1",
                True,
                NOW,
                report={"ts": NOW - 9000, "interval_s": 0.5},
                received_at=NOW - 9000,
            ),
            Status.ONLINE,
            None,
        ),
        (
            "born, no report yet, within the bound",
            GatewayFacts("gw1", True, NOW - 10_000),
            Status.ONLINE,
            None,
        ),
        (
            "born long ago, never a report",
            GatewayFacts("gw1", True, NOW - 100_000),
            Status.SILENT,
            "connected, but no health report (expected every 30 s)",
        ),
        (
            "clock 8 s behind",
            GatewayFacts("gw1", True, NOW, report={"ts": NOW - 8000}, received_at=NOW),
            Status.ONLINE,
            "clock off by -8.0 s",
        ),
        (
            "outbox overflowing",
            GatewayFacts(
                "gw1", True, NOW, report={"ts": NOW, "outbox_dropped": 12}, received_at=NOW
            ),
            Status.ONLINE,
            "dropped 12",
        ),
        (
            "report stale",
            GatewayFacts(
                "gw1",
                True,
                NOW,
                report={"ts": NOW - 100_000},
                received_at=NOW - 100_000,
                report_interval_s=30,
            ),
            Status.SILENT,
            "no health report for 100 s",
        ),
    ],
)
def test_gateway(name: str, g: GatewayFacts, status: Status, reason: str | None) -> None:
    a = assess_gateway(g, NOW)
    assert a.status is status, name
    assert (reason is None) == a.healthy, (name, a.reasons)
    if reason:
        assert any(reason in r for r in a.reasons), (name, a.reasons)


# ---- problems grouped by root cause ---------------------------------------------------------

GW_OK = GatewayFacts("gw1", True, NOW, report={"ts": NOW}, received_at=NOW)
DOWN = {"dead": report(consecutive=5, online=False), "ok": report()}


def dev(name: str, state: str = "ok", gateway: str = "gw1", grid: str = "") -> DeviceFacts:
    # as the store builds them: a device carries its gateway's state (gw2 dead, gw3 never seen)
    return facts(id=f"{gateway}:{name}", gateway=gateway, device=name, report=DOWN[state],
                 grid=grid, gateway_online=gateway == "gw1",
                 gateway_connected_once=gateway != "gw3")  # fmt: skip


def gw_with_buses(*buses: dict[str, Any]) -> GatewayFacts:
    return GatewayFacts("gw1", True, NOW, report={"ts": NOW, "buses": list(buses)},
                        received_at=NOW)  # fmt: skip


def bus(name: str, up: bool, *devices: str) -> dict[str, Any]:
    return {"bus": name, "type": "modbus_tcp", "address": "127.0.0.1:5020", "up": up,
            "down_since": NOW - 60_000 if not up else None, "devices": list(devices)}  # fmt: skip


def judged(gws: list[GatewayFacts], devs: list[DeviceFacts]) -> tuple[
    list[tuple[GatewayFacts, Assessment]], list[tuple[DeviceFacts, Assessment]]
]:  # fmt: skip
    return [(g, assess_gateway(g, NOW)) for g in gws], [(d, assess_device(d, NOW)) for d in devs]


DEAD_GW = GatewayFacts("gw2", False, NOW, died_at=NOW - 5000)
NEW_GW = GatewayFacts("gw3", False, NOW, connected_once=False)


@pytest.mark.parametrize(
    ("name", "gws", "devs", "expected"),
    [
        ("all healthy", [GW_OK], [dev("a"), dev("b")], []),
        (
            "a gateway offline covers its devices: one entry",
            [GW_OK, DEAD_GW],
            [dev(f"d{i}", gateway="gw2") for i in range(20)] + [dev("a")],
            [("gateway", "gw2", "gateway gw2 offline (death message): its 20 devices are stale",
              20)],
        ),
        (
            "a never-connected gateway: never connected, not a death message",
            [NEW_GW],
            [dev("x", gateway="gw3")],
            [("gateway", "gw3", "gateway gw3 never connected: its device has never reported",
              1)],
        ),
        (
            "a silent gateway (agent stopped, no will) covers its devices gone silent",
            [GatewayFacts("gw1", True, NOW - 200_000, report={"ts": NOW - 200_000},
                          received_at=NOW - 200_000)],
            [dev("a", "ok"), facts(id="gw1:b", device="b", last_seen=NOW - 200_000)],
            [("gateway", "gw1", "gateway gw1 connected, but no health report for 200 s "
              "(expected every 30 s): its device is not reported on", 1)],
        ),
        (
            "a bus the edge reports down covers its devices; a device elsewhere stands alone",
            [gw_with_buses(bus("cabinet", False, "a", "b", "c"), bus("other", True, "d", "e"))],
            [dev("a", "dead"), dev("b", "dead"), dev("c", "dead"), dev("d", "dead"), dev("e")],
            [("bus", "gw1/cabinet", "bus cabinet (127.0.0.1:5020) on gateway gw1 unreachable: "
              "its 3 devices are not answering", 3),
             ("device", "gw1:d", "not answering: 5 consecutive failed reads", 1)],
        ),
        (
            "the bus reachable but not one of its devices answers: the bus, not 3 devices",
            [gw_with_buses(bus("rs485", True, "a", "b", "c"))],
            [dev("a", "dead"), dev("b", "dead"), dev("c", "dead")],
            [("bus", "gw1/rs485", "bus rs485 (127.0.0.1:5020) on gateway gw1: none of its 3 "
              "devices answers", 3)],
        ),
        (
            "one device of a bus: the device itself",
            [gw_with_buses(bus("rs485", True, "a", "b"))],
            [dev("a", "dead"), dev("b")],
            [("device", "gw1:a", "not answering: 5 consecutive failed reads", 1)],
        ),
        (
            "a gateway with a finding covers nothing: its devices are their own problems",
            [GatewayFacts("gw1", True, NOW, report={"ts": NOW, "outbox_dropped": 3},
                          received_at=NOW)],
            [dev("a", "dead")],
            [("gateway", "gw1", "outbox dropped 3 messages", 0),
             ("device", "gw1:a", "not answering: 5 consecutive failed reads", 1)],
        ),
    ],
)  # fmt: skip
def test_problems_by_root_cause(
    name: str, gws: list[GatewayFacts], devs: list[DeviceFacts],
    expected: list[tuple[str, str, str, int]],
) -> None:  # fmt: skip
    got = group_problems(*judged(gws, devs))
    assert [(p.kind, p.id, p.reason, len(p.devices)) for p in got] == expected, name


def test_a_bus_down_since_is_on_the_centre_clock() -> None:
    g = GatewayFacts("gw1", True, NOW, report={"ts": NOW + 2000, "buses": [bus("c", False, "a")]},
                     received_at=NOW)  # fmt: skip
    (p,) = group_problems(*judged([g], [dev("a", "dead")]))
    assert p.since == NOW - 60_000 - 2000 and p.address == "127.0.0.1:5020" and p.bus == "c"


# ---- the edge's side: the window of recent polls (drivers.health), with a fake clock ---------


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def polls(stats: DeviceStats, clock: FakeClock, pattern: str, every_s: float = 1.0) -> None:
    for c in pattern:
        clock.t += every_s
        stats.ok(int(clock.t * 1000), 3.0) if c == "o" else stats.failed("timeout")


@pytest.mark.parametrize(
    ("name", "pattern", "every_s", "later_s", "recent"),
    [
        ("a one-minute outage, then 50 answered polls", "o" * 100 + "x" * 60 + "o" * 50, 1, 0,
         (50, 0)),
        ("12 of the last 50 failed", "o" * 500 + "x" * 12 + "o" * 38, 1, 0, (38, 12)),
        ("a slow device: polls older than 10 minutes drop out", "x" * 5 + "o" * 10, 60, 0,
         (10, 1)),
        ("nothing polled for 11 minutes: nothing to judge", "xxo", 1, 660, (0, 0)),
    ],
)  # fmt: skip
def test_recent_polls_window(
    name: str, pattern: str, every_s: float, later_s: float, recent: tuple[int, int]
) -> None:
    clock = FakeClock()
    stats = DeviceStats("d1", clock=clock)
    polls(stats, clock, pattern, every_s)
    clock.t += later_s
    snap = stats.snapshot()
    assert (snap.recent_ok, snap.recent_failed) == recent, name
    tail = len(pattern) - len(pattern.rstrip("o"))
    assert snap.consecutive_ok == tail, name
    assert (snap.last_failed is None) == ("x" not in pattern), name
    assert snap.reads_ok + snap.reads_failed == len(pattern)  # lifetime counters unchanged


@pytest.mark.parametrize(
    ("name", "pattern", "told"),
    [
        ("steady answers: told once, at the first", "o" * 20, 1),
        ("a one-poll glitch: stops, answers again, 3 in a row", "o" * 5 + "x" + "o" * 5, 4),
        ("an outage: stops, offline at 3, answers again, recovered at 3 in a row",
         "o" * 5 + "x" * 10 + "o" * 10, 5),
        ("failing from the start: stops, offline", "x" * 10, 2),
    ],
)  # fmt: skip
def test_changes_the_edge_reports_at_once(name: str, pattern: str, told: int) -> None:
    clock = FakeClock()
    stats = DeviceStats("d1", clock=clock)
    heard: list[int] = []
    listener = lambda: heard.append(1)  # noqa: E731
    CHANGES.listeners.add(listener)
    try:
        polls(stats, clock, pattern)
    finally:
        CHANGES.listeners.discard(listener)
    assert len(heard) == told, name


def test_a_bus_down_and_back_is_told_once_each() -> None:
    heard: list[int] = []
    listener = lambda: heard.append(1)  # noqa: E731
    CHANGES.listeners.add(listener)
    try:
        state = BusState()
        for _ in range(3):
            state.down("cabinet unreachable")
        for _ in range(3):
            state.up()
    finally:
        CHANGES.listeners.discard(listener)
    assert len(heard) == 2


def test_bus_state_down_until_it_connects_again() -> None:
    state = BusState()
    state.down("cabinet (127.0.0.1:5020) unreachable")
    since = state.down_since
    state.down("cabinet (127.0.0.1:5020) unreachable")
    down = state.snapshot("cabinet", "modbus_tcp", "127.0.0.1:5020", ["wl-1"])
    assert not down.up and down.down_since == since and "unreachable" in down.error
    state.up()
    assert state.snapshot("cabinet", "modbus_tcp", "127.0.0.1:5020", []).up


# ---- `gridwatch health`: the groups, printed; the summary; the exit code ---------------------


def cli_report(problems: list[dict[str, Any]], devices: list[dict[str, Any]],
               gateways: tuple[int, int] = (1, 0)) -> dict[str, Any]:  # fmt: skip
    bad = sum(not d["healthy"] for d in devices)
    return {"healthy": not problems, "unhealthy": len(problems), "problems": problems,
            "devices": devices, "gateways": [],
            "summary": {"devices": len(devices), "devices_unhealthy": bad,
                        "gateways": gateways[0], "gateways_unhealthy": gateways[1]}}  # fmt: skip


def cli_dev(i: str, healthy: bool = False, reason: str = "not answering") -> dict[str, Any]:
    return {"id": f"gw1:{i}", "device": i, "status": "online" if healthy else "offline",
            "healthy": healthy, "reasons": [] if healthy else [reason], "district": "310104",
            "grid": "310104017021001"}  # fmt: skip


BUS_DOWN = {"kind": "bus", "id": "gw1/cab", "gateway": "gw1", "status": "offline",
            "reason": "bus cab (10.0.0.5:502) on gateway gw1 unreachable: its 2 devices are not "
            "answering", "since": 1, "devices": ["gw1:a", "gw1:b"], "bus": "cab",
            "address": "10.0.0.5:502", "district": "", "grid": ""}  # fmt: skip
ALONE = {"kind": "device", "id": "gw1:c", "gateway": "gw1", "status": "offline",
         "reason": "not answering", "since": 1, "devices": ["gw1:c"], "bus": "", "address": "",
         "district": "310104", "grid": "310104017021001"}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "report", "show_all", "lines"),
    [
        ("all healthy", cli_report([], [cli_dev("a", True)]), False,
         ["", "healthy: 0 of 1 devices unhealthy; 0 of 1 gateways unhealthy"]),
        ("a bus down and a device: two groups, the bus's devices under it",
         cli_report([BUS_DOWN, ALONE], [cli_dev("a"), cli_dev("b"), cli_dev("c"),
                                        cli_dev("d", True)]), False,
         ["", "bus gw1/cab: offline: bus cab (10.0.0.5:502) on gateway gw1 unreachable: its 2 "
          "devices are not answering",
          "  gw1:a                        offline  not answering",
          "  gw1:b                        offline  not answering",
          "", "310104 / 310104017021001",
          "  gw1:c                        offline  not answering",
          "", "2 problems: 3 of 4 devices unhealthy; 0 of 1 gateways unhealthy"]),
        ("--all adds the healthy ones", cli_report([], [cli_dev("d", True)]), True,
         ["", "healthy", "  gw1:d                        online   ok",
          "", "healthy: 0 of 1 devices unhealthy; 0 of 1 gateways unhealthy"]),
    ],
)  # fmt: skip
def test_health_cli_prints_the_groups(
    name: str, report: dict[str, Any], show_all: bool, lines: list[str]
) -> None:
    """(The exit code on the real CLI: tests/test_health_field.py.)"""
    out = io.StringIO()
    healthcli.render(report, show_all, out)
    assert out.getvalue().split("\n")[:-1] == lines, name
