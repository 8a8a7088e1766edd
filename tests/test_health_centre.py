"""The centre's own health, pure: its dependencies judged from a bridge's report, the stall
that follows, and device and gateway health told apart from it. Tables, with a fake clock."""

from __future__ import annotations

import io
import socket
from typing import Any

import pytest

from device_registry.health.centre import (
    BridgeReport,
    CentrePolicy,
    Dependency,
    LaneState,
    Level,
    Link,
    LinkState,
    Stall,
    error_kind,
    judge_bridge,
    judge_bridges,
    judge_database,
    stall,
    worst,
)
from device_registry.health.core import (
    DeviceFacts,
    GatewayFacts,
    Status,
    assess_device,
    assess_gateway,
    group_problems,
)
from gridwatch.top import healthcli

NOW = 1_700_000_000_000  # 22:13:20 UTC
UP = LaneState(connected=True, since=NOW - 60_000)


def bridge(**kw: Any) -> BridgeReport:
    base: dict[str, Any] = dict(bridge="b1", at=NOW, lanes={"events": UP, "telemetry": UP},
                                store="influx", sink=LinkState(ok_at=NOW - 500),
                                registry=LinkState(ok_at=NOW - 400))  # fmt: skip
    base.update(kw)
    return BridgeReport(**base)


def failing(n: int, since: int, error: str = "connection refused") -> LinkState:
    return LinkState(ok_at=since - 1000, failures=n, failing_since=since, error=error)


def by_name(deps: list[Dependency]) -> dict[str, tuple[Level, str]]:
    return {d.name: (d.status, d.reason) for d in deps}


@pytest.mark.parametrize(
    ("name", "report", "dependency", "status", "reason"),
    [
        ("all well: the store", bridge(), "time-series store", Level.OK, "last success 22:13:19"),
        ("all well: the lanes", bridge(), "broker", Level.OK,
         "connected: events since 22:12:20 UTC, telemetry since 22:12:20 UTC"),
        ("all well: nothing waits", bridge(), "ingest lag", Level.OK,
         "nothing waits to be committed"),
        ("one failed write: degraded, not down yet", bridge(sink=failing(1, NOW - 300)),
         "time-series store", Level.DEGRADED,
         "time-series store failing since 22:13:19 UTC (1 failed call, connection refused; "
         "retrying)"),
        ("three failed writes: down, with since when and the error's kind",
         bridge(sink=failing(3, NOW - 14_000)), "time-series store", Level.DOWN,
         "time-series store down since 22:13:06 UTC (3 failed calls, connection refused; "
         "retrying)"),
        ("the embedded history is named as such", bridge(store="sqlite", sink=failing(5, NOW)),
         "telemetry history", Level.DOWN,
         "telemetry history down since 22:13:20 UTC (5 failed calls, connection refused; "
         "retrying)"),
        ("the registry database as the bridge met it", bridge(registry=failing(4, NOW - 2000,
         "timed out")), "database", Level.DOWN,
         "registry database down since 22:13:18 UTC (4 failed calls, timed out; retrying)"),
        ("a lane lost", bridge(lanes={"events": UP, "telemetry": LaneState(
            connected=False, since=NOW - 5000)}), "broker", Level.DOWN,
         "broker session telemetry lost since 22:13:15 UTC"),
        ("both lanes lost: since the first", bridge(lanes={
            "events": LaneState(connected=False, since=NOW - 3000),
            "telemetry": LaneState(connected=False, since=NOW - 5000)}), "broker", Level.DOWN,
         "broker sessions events, telemetry lost since 22:13:15 UTC"),
        ("a lane still making its first connection: not failing yet", bridge(lanes={
            "events": UP, "telemetry": LaneState(connected=False, since=None)}), "broker",
         Level.OK, "connecting: telemetry"),
        ("a message waiting 2 s: within the bound", bridge(oldest_uncommitted=NOW - 2000),
         "ingest lag", Level.OK, "2.0 s"),
        ("a message waiting 23 s: behind", bridge(oldest_uncommitted=NOW - 23_000),
         "ingest lag", Level.DEGRADED,
         "behind: a message received at 22:12:57 UTC (23 s ago) is not committed yet"),
    ],
)  # fmt: skip
def test_a_bridges_dependencies(
    name: str, report: BridgeReport, dependency: str, status: Level, reason: str
) -> None:
    got = by_name(judge_bridge(report, NOW))
    assert got[dependency][0] is status, (name, got)
    assert got[dependency][1].startswith(reason), (name, got[dependency][1])


@pytest.mark.parametrize(
    ("name", "age_ms", "live", "names"),
    [
        ("a fresh heartbeat: judged like a live report", 3_000, False,
         ["broker", "time-series store", "database", "ingest lag"]),
        ("a stale heartbeat: the bridge is not heard from, nothing else is claimed", 16_000,
         False, ["bridge"]),
        ("a live report is never stale", 16_000, True,
         ["broker", "time-series store", "database", "ingest lag"]),
    ],
)  # fmt: skip
def test_a_heartbeat_goes_stale(name: str, age_ms: int, live: bool, names: list[str]) -> None:
    deps = judge_bridge(bridge(at=NOW - age_ms), NOW, live=live)
    assert [d.name for d in deps] == names, name
    if names == ["bridge"]:
        (d,) = deps
        assert d.status is Level.DOWN and d.stalls and d.since == NOW - age_ms
        assert d.reason == ("no report since 22:13:04 UTC (16 s): stopped, hung, or cannot reach "
                            "the database")  # fmt: skip
        assert d.label == "bridge b1: bridge"


def test_the_registrys_own_database() -> None:
    link = Link()
    assert judge_database(link.state, NOW).status is Level.OK
    link.failed(NOW - 1000, ConnectionRefusedError(111, "refused"))
    d = judge_database(link.state, NOW, CentrePolicy(down_after_failures=1))
    assert (d.status, d.since, d.label, d.stalls) == (Level.DOWN, NOW - 1000, "database", False)
    assert d.reason == ("database down since 22:13:19 UTC (1 failed call, connection refused; "
                        "retrying)")  # fmt: skip
    link.failed(NOW, TimeoutError())
    assert (link.state.failures, link.state.failing_since, link.state.error) == (
        2, NOW - 1000, "timed out")  # fmt: skip
    link.ok(NOW + 5)
    assert link.state == LinkState(ok_at=NOW + 5)


def _chained(outer: Exception, inner: BaseException) -> Exception:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("exc", "words"),
    [
        (ConnectionRefusedError(111, "Connect call failed ('10.1.2.3', 8428)"),
         "connection refused"),
        (_chained(RuntimeError("sink: http://10.1.2.3:8428 unreachable"),
                  ConnectionRefusedError()), "connection refused"),
        (_chained(RuntimeError("x"), _chained(OSError("y"), TimeoutError())), "timed out"),
        (socket.gaierror(-2, "Name or service not known"), "host name not found"),
        (ConnectionResetError(), "connection reset"),
        (BrokenPipeError(), "connection lost"),
        (OSError(113, "No route to host"), "network error"),
        (ValueError("password=hunter2"), "ValueError"),
    ],
)  # fmt: skip
def test_an_error_is_told_by_its_kind_never_its_text(exc: BaseException, words: str) -> None:
    assert error_kind(exc) == words


STORE_DOWN = Dependency("time-series store", "bridge b1", Level.DOWN, "store down since X",
                        NOW - 14_000, stalls=True)  # fmt: skip
LAGGING = Dependency("ingest lag", "bridge b1", Level.DEGRADED, "behind", NOW - 15_000, True)
DOWNLINK = Dependency("registry downlink", "registry", Level.DOWN, "lost", NOW - 99_000)


@pytest.mark.parametrize(
    ("name", "deps", "expected"),
    [
        ("nothing wrong", [], None),
        ("a registry session down does not stop ingestion", [DOWNLINK], None),
        ("the store down", [STORE_DOWN], Stall(NOW - 14_000, "store down since X")),
        ("the lag alone", [LAGGING], Stall(NOW - 15_000, "behind")),
        ("the lag is a consequence: the store is named, the stall since the lag's start",
         [LAGGING, STORE_DOWN, DOWNLINK], Stall(NOW - 15_000, "store down since X")),
    ],
)  # fmt: skip
def test_the_stall(name: str, deps: list[Dependency], expected: Stall | None) -> None:
    assert stall(deps, NOW) == expected, name


@pytest.mark.parametrize(
    ("name", "report", "since"),
    [
        ("all well", bridge(), None),
        # the step waits for the store from its first failure, and its devices' data with it
        ("a write failing: degraded, and a stall from its first failure",
         bridge(sink=failing(2, NOW - 1500)), NOW - 1500),
        ("the store down", bridge(sink=failing(3, NOW - 9000)), NOW - 9000),
        ("the database down as the bridge meets it", bridge(registry=failing(3, NOW - 4000)),
         NOW - 4000),
        ("a lane lost", bridge(lanes={"events": LaneState(connected=False, since=NOW - 7000),
                                      "telemetry": UP}), NOW - 7000),
        ("behind by 6 s", bridge(oldest_uncommitted=NOW - 6000), NOW - 6000),
        ("behind by 4 s: normal running", bridge(oldest_uncommitted=NOW - 4000), None),
    ],
)  # fmt: skip
def test_what_stalls_ingestion(name: str, report: BridgeReport, since: int | None) -> None:
    got = stall(judge_bridge(report, NOW), NOW)
    assert (got and got.since) == since, (name, got)


LOST = {"events": LaneState(connected=False, since=NOW - 7000), "telemetry": UP}


@pytest.mark.parametrize(
    ("name", "reports", "stalled", "degraded"),
    [
        ("two members, both well", [(bridge(share_group="ingest"), True),
                                    (bridge(bridge="b2", share_group="ingest", at=NOW - 3000),
                                     False)], None, []),
        # the case: one of two killed, its heartbeat stale; the other takes the stream
        ("one of two not heard from: a degraded part, the centre ingests",
         [(bridge(share_group="ingest"), True),
          (bridge(bridge="b2", share_group="ingest", at=NOW - 20_000), False)],
         None, ["bridge b2: bridge"]),
        ("one of two with its session lost",
         [(bridge(share_group="ingest"), True),
          (bridge(bridge="b2", share_group="ingest", lanes=LOST), True)],
         None, ["bridge b2: broker"]),
        ("both of a group down: not ingesting",
         [(bridge(share_group="ingest", lanes=LOST), True),
          (bridge(bridge="b2", share_group="ingest", at=NOW - 20_000), False)],
         NOW - 20_000, []),
        ("another group does not cover for it",
         [(bridge(share_group="east"), True),
          (bridge(bridge="b2", share_group="west", at=NOW - 20_000), False)],
         NOW - 20_000, []),
        ("bridges without a group each take every message: none covers for another",
         [(bridge(), True), (bridge(bridge="b2", at=NOW - 20_000), False)], NOW - 20_000, []),
    ],
)  # fmt: skip
def test_a_share_group_ingests_while_one_member_does(
    name: str, reports: list[tuple[BridgeReport, bool]], stalled: int | None,
    degraded: list[str],
) -> None:  # fmt: skip
    deps = judge_bridges(reports, NOW)
    got = stall(deps, NOW)
    assert (got and got.since) == stalled, (name, got)
    if stalled is None:
        assert [d.label for d in deps if d.status is not Level.OK] == degraded, name
        assert all(d.status is Level.DEGRADED for d in deps if d.status is not Level.OK), name
        assert all("share group ingest ingests without it (bridge b1)" in d.reason
                   for d in deps if d.status is not Level.OK), name  # fmt: skip


def test_the_worst_level_decides() -> None:
    assert worst([]) is Level.OK
    assert worst([Level.OK, Level.DEGRADED]) is Level.DEGRADED
    assert worst([Level.DOWN, Level.OK, Level.DEGRADED]) is Level.DOWN


STALLED = Stall(NOW - 20_000, "time-series store down since 22:13:00 UTC (7 failed calls, "
                "connection refused; retrying)")  # fmt: skip


def device(**kw: Any) -> DeviceFacts:
    base: dict[str, Any] = dict(id="gw1:d1", gateway="gw1", device="d1", interval_s=1.0)
    base.update(kw)
    return DeviceFacts(**base)


@pytest.mark.parametrize(
    ("name", "f", "centre", "status", "reason"),
    [
        ("data until the stall began: not silent, unknown, and why",
         device(last_seen=NOW - 21_000), STALLED, Status.UNKNOWN,
         "no data for 21 s: the centre is not ingesting since 22:13:00 UTC (time-series store "
         "down since 22:13:00 UTC (7 failed calls, connection refused; retrying))"),
        ("the same without a stall: silent", device(last_seen=NOW - 21_000), None,
         Status.SILENT, "no data for 21 s (expected every 1 s)"),
        ("silent before the stall began: silent still", device(last_seen=NOW - 60_000), STALLED,
         Status.SILENT, "no data for 60 s (expected every 1 s)"),
        ("at the edge: the silence would have been found just as the stall began",
         device(last_seen=NOW - 23_000), STALLED, Status.UNKNOWN, "no data for 23 s: the centre"),
        ("just past it: silent", device(last_seen=NOW - 23_001), STALLED, Status.SILENT,
         "no data for 23 s (expected"),
        ("a gateway's clock ahead by 5 s is taken off first",
         device(last_seen=NOW - 21_000 + 5000, clock_offset_ms=5000), STALLED, Status.UNKNOWN,
         "no data for 21 s: the centre"),
        ("recent data during a stall (another lane's fault): online",
         device(last_seen=NOW - 500), STALLED, Status.ONLINE, None),
        ("an offline gateway is offline whatever the centre's state",
         device(last_seen=NOW - 21_000, gateway_online=False), STALLED, Status.OFFLINE,
         "gateway gw1 offline"),
    ],
)  # fmt: skip
def test_a_device_is_not_silent_while_the_centre_is_not_ingesting(
    name: str, f: DeviceFacts, centre: Stall | None, status: Status, reason: str | None
) -> None:
    a = assess_device(f, NOW, centre=centre)
    assert a.status is status, (name, a)
    if reason is None:
        assert a.reasons == [], (name, a)
    else:
        assert a.reasons[0].startswith(reason), (name, a.reasons)
    assert not a.healthy or status is Status.ONLINE


@pytest.mark.parametrize(
    ("name", "heard_ago_ms", "centre", "status"),
    [
        ("reports stopped as the stall began: unknown", 15_000, STALLED, Status.UNKNOWN),
        ("the same without a stall: silent", 15_000, None, Status.SILENT),
        ("stopped long before: silent", 200_000, STALLED, Status.SILENT),
        ("reporting: online", 1_000, STALLED, Status.ONLINE),
    ],
)  # fmt: skip
def test_a_gateway_is_not_silent_while_the_centre_is_not_ingesting(
    name: str, heard_ago_ms: int, centre: Stall | None, status: Status
) -> None:
    g = GatewayFacts(id="gw1", online=True, last_seen=NOW - heard_ago_ms,
                     received_at=NOW - heard_ago_ms, report={"interval_s": 2.0})  # fmt: skip
    assert assess_gateway(g, NOW, centre=centre).status is status, name


def test_one_centre_problem_covers_the_field_it_cannot_judge() -> None:
    """Forty devices without data since the store went down, one silent before it, one
    gateway whose reports stopped with it: one centre problem listing the forty first, then
    the truly silent device on its own; the gateway is counted, not a problem of its own."""
    gw = GatewayFacts(id="gw1", online=True, last_seen=NOW - 15_000, received_at=NOW - 15_000,
                      report={"interval_s": 2.0})  # fmt: skip
    devices = [device(id=f"gw1:d{i:02}", device=f"d{i:02}", last_seen=NOW - 21_000)
               for i in range(40)]  # fmt: skip
    devices.append(device(id="gw1:old", device="old", last_seen=NOW - 90_000))
    judged = [(f, assess_device(f, NOW, centre=STALLED)) for f in devices]
    problems = group_problems([(gw, assess_gateway(gw, NOW, centre=STALLED))], judged, STALLED)
    assert [(p.kind, p.id, p.status) for p in problems] == [
        ("centre", "centre", "not_ingesting"), ("device", "gw1:old", "silent")]  # fmt: skip
    centre = problems[0]
    assert len(centre.devices) == 40 and "gw1:old" not in centre.devices
    assert centre.since == STALLED.since
    assert centre.reason == (
        "the centre is not ingesting since 22:13:00 UTC: time-series store down since 22:13:00 "
        "UTC (7 failed calls, connection refused; retrying); 40 devices and 1 gateway without "
        "recent data cannot be judged")  # fmt: skip


def test_a_centre_problem_alone_when_nothing_is_late_yet() -> None:
    f = device(last_seen=NOW - 500)
    (p,) = group_problems([], [(f, assess_device(f, NOW, centre=STALLED))], STALLED)
    assert (p.kind, p.devices) == ("centre", ())
    assert p.reason.endswith("connection refused; retrying)")


def _report(problems: list[dict[str, Any]], **summary: int) -> dict[str, Any]:
    s = {"devices": 3, "devices_unhealthy": 0, "gateways": 1, "gateways_unhealthy": 0}
    s.update(summary)
    devices = [
        {
            "id": "gw1:a",
            "status": "unknown",
            "healthy": False,
            "last_seen": NOW - 50_000,
            "reasons": ["no data for 30 s: the centre is not ingesting since 22:13:00 UTC"],
        }
    ]
    return {"healthy": not problems, "problems": problems, "devices": devices, "summary": s}


CENTRE = {"kind": "centre", "id": "centre", "gateway": "", "status": "not_ingesting",
          "reason": "the centre is not ingesting since 22:13:00 UTC: time-series store down",
          "since": NOW, "devices": ["gw1:a", "gw1:b"], "district": "", "grid": ""}  # fmt: skip


@pytest.mark.parametrize(
    ("name", "report", "show_all", "lines"),
    [
        ("the centre in one line, the devices counted as unknown", _report(
            [CENTRE], devices_unknown=2), False,
         ["centre: not ingesting: the centre is not ingesting since 22:13:00 UTC: time-series "
          "store down",
          "1 problem: 0 of 3 devices unhealthy, 2 unknown; 0 of 1 gateways unhealthy"]),
        ("--all lists them", _report([CENTRE], devices_unknown=2, gateways_unknown=1), True,
         ["centre: not ingesting: the centre is not ingesting since 22:13:00 UTC: time-series "
          "store down",
          "  gw1:a                        unknown  last heard from at 22:12:30 UTC; cannot tell "
          "whether it is silent while the centre is not ingesting (above)",
          "  gw1:b                        unknown  never heard from; cannot tell whether it is "
          "silent while the centre is not ingesting (above)",
          "1 problem: 0 of 3 devices unhealthy, 2 unknown; 0 of 1 gateways unhealthy, 1 unknown"]),
    ],
)  # fmt: skip
def test_the_cli_says_the_centre_first(
    name: str, report: dict[str, Any], show_all: bool, lines: list[str]
) -> None:
    out = io.StringIO()
    healthcli.render(report, show_all, out)
    assert [line for line in out.getvalue().splitlines() if line] == lines, name


def test_a_centre_that_is_not_ingesting_is_retry_later_not_unhealthy() -> None:
    assert healthcli.CENTRE_DEGRADED == 3
    assert healthcli.CENTRE_DEGRADED not in (healthcli.HEALTHY, healthcli.UNHEALTHY)


def test_the_cli_asks_for_the_largest_page_and_says_when_the_field_is_larger() -> None:
    """The API pages its device list (1,000 by default): the CLI asks for its largest page
    and, when that is full, says the rest is not listed instead of dropping it silently."""
    report = _report([], devices=25_000)
    report["devices"] = [{"id": f"gw1:d{i}", "status": "online", "healthy": True,
                          "last_seen": NOW, "reasons": []}
                         for i in range(healthcli.MAX_DEVICES)]  # fmt: skip
    out = io.StringIO()
    healthcli.render(report, False, out)
    assert "only the first 10000 devices are listed: narrow with --district" in out.getvalue()
    small = io.StringIO()
    healthcli.render(_report([]), False, small)
    assert "only the first" not in small.getvalue()
