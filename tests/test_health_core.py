"""The health core: status and reasons from facts, with a fake clock. Tables."""

from __future__ import annotations

from typing import Any

import pytest

from device_registry.health.core import (
    DeviceFacts,
    GatewayFacts,
    Status,
    assess_device,
    assess_gateway,
)

NOW = 1_700_000_000_000


def facts(**kw: Any) -> DeviceFacts:
    base: dict[str, Any] = dict(id="gw1:d1", gateway="gw1", device="d1", interval_s=2.0,
                                last_seen=NOW - 1000)  # fmt: skip
    base.update(kw)
    return DeviceFacts(**base)


def report(ok: int = 100, failed: int = 0, consecutive: int = 0, online: bool = True,
           last_ok: int | None = NOW - 1000) -> dict[str, Any]:  # fmt: skip
    return {"device": "d1", "online": online, "reads_ok": ok, "reads_failed": failed,
            "consecutive_failures": consecutive, "last_ok": last_ok}  # fmt: skip


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
            "one read in five fails",
            facts(report=report(ok=80, failed=20)),
            Status.ONLINE,
            "failing reads: 80% succeed",
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
            Status.ONLINE,
            "no health report for 100 s",
        ),
    ],
)
def test_gateway(name: str, g: GatewayFacts, status: Status, reason: str | None) -> None:
    a = assess_gateway(g, NOW)
    assert a.status is status, name
    assert (reason is None) == (a.reasons == [] and status is Status.ONLINE), (name, a.reasons)
    if reason:
        assert any(reason in r for r in a.reasons), (name, a.reasons)
