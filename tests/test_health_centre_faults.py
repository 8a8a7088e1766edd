"""The centre under its own faults, on the real parts: a field of Modbus devices behind a real
edge agent, mosquitto, VictoriaMetrics, the bridge and the registry API (in one process as
``central run`` composes them, or the bridge as its own process as ``bridge run``).

VictoriaMetrics stopped: ``/health`` names the store within seconds, devices are not called
silent but "unknown" with the reason, ``gridwatch health`` says why and exits 3 (retry later);
the store back, all is ok and every reading the gateway sent is in the store. The database
stopped: ``/health`` says database down."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cloud_bridge import Bridge
from cloud_bridge.app import bridge_metrics
from cloud_bridge.sink_influx import InfluxSink
from device_registry import Changes, RegistryStore
from device_registry.db.tables import BridgeHeartbeat
from device_registry.delivery.runtime import Delivery
from device_registry.health.centre import BridgeReport, LaneState, LinkState
from device_registry.health.store import beat
from device_registry.http.app import build_app, serving
from device_registry.http.auth import SYSTEM, Role, TokenRequest, issue
from gridwatch.ground.contract import Birth, DeviceInfo, Location
from gridwatch.top import exits, healthcli
from gridwatch.top.sim.modbus import SimField
from tests._central_helpers import bridge_config, bridge_process, now_ms, running
from tests._ops_helpers import registry
from tests.fieldkit import listen
from tests.fieldkit import running as edge_running
from tests.services import Mosquitto, Postgres, Victoria
from tests.test_dashboard import CHROMIUM, FLAGS
from tests.test_health_field import LAST, Centre, field_config, within
from tests.test_metrics import scrape

OUTAGE_S = 10.0


async def health(http: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{url}/health") as r:
        body: dict[str, Any] = await r.json()
        return r.status, body


def dependency(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in body["dependencies"] if d["name"] == name)


@asynccontextmanager
async def central(
    tmp: Path, broker: Mosquitto, prefix: str, vm: Victoria, db_url: str | None = None
) -> AsyncIterator[tuple[Centre, Bridge]]:
    """Registry API and bridge in one process, on VictoriaMetrics, as ``central run``."""
    store = await RegistryStore.open(db_url or f"sqlite+aiosqlite:///{tmp / 'registry.db'}")
    sink = InfluxSink(vm.url)
    token = (await issue(store, TokenRequest(name="crew-7", role=Role.MAINTENANCE), SYSTEM)).token
    cfg = bridge_config("127.0.0.1", broker.port, prefix, tmp / "central", influx_url=vm.url)
    bridge = Bridge(cfg, store, sink)
    delivery = Delivery(poll_s=0.2, extra_metrics=bridge_metrics(bridge))
    app = build_app(store=store, delivery=delivery, bridges=[bridge.report])
    try:
        async with running(bridge), serving(app, "127.0.0.1", 0) as url:
            yield Centre(url, token), bridge
    finally:
        await sink.close()
        await store.close()


def published(heard: Any) -> set[tuple[str, str, int]]:
    """(device, point, ts) of every number the gateway sent."""
    return {(r["device"], r["point"], r["ts"]) for m in heard.on("telemetry")
            for r in m["readings"] if isinstance(r["value"], int | float)}  # fmt: skip


async def stored(vm: Victoria, gateway: str) -> set[tuple[str, str, int]]:
    rows = await asyncio.to_thread(vm.export, f'gridwatch_value{{gateway="{gateway}"}}')
    return {(r["metric"]["device"], r["metric"]["point"], ts) for r in rows
            for ts in r["timestamps"]}  # fmt: skip


async def test_a_store_outage_is_named_and_devices_are_not_called_silent(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    vm = Victoria(tmp_path / "vm").start()
    cfg, devices = field_config(tmp_path, mosquitto, prefix, push=False)
    try:
        async with (
            central(tmp_path, mosquitto, prefix, vm) as (c, bridge),
            aiohttp.ClientSession() as http,
            listen(mosquitto.port, f"{prefix}/gw/+/telemetry") as heard,
            SimField(devices, update_s=3600),
            edge_running(cfg, devices),
        ):

            async def field_ok() -> bool:
                code, body = await health(http, c.url)
                h = await c.health(http)
                LAST[:] = [body["failing"], h["problems"]]
                return code == 200 and bool(h["healthy"]) and len(h["devices"]) == 4 and all(
                    d["last_seen"] for d in h["devices"])  # fmt: skip

            await within("the field and the centre ok", 30, field_ok)
            code, body = await health(http, c.url)
            assert body["status"] == "ok" and body["bridges"].endswith("in this process (live)")
            assert dependency(body, "time-series store")["status"] == "ok"

            vm.stop()
            t0 = time.monotonic()

            async def store_named() -> bool:
                code, body = await health(http, c.url)
                LAST[:] = [code, body.get("failing")]
                return code == 503 and dependency(body, "time-series store")["status"] == "down"

            took = await within("/health names the store", 5, store_named, t0)
            code, body = await health(http, c.url)
            store = dependency(body, "time-series store")
            assert (code, body["status"]) == (503, "down")
            assert f"bridge {bridge.cfg.client_id}: time-series store" in body["failing"]
            assert store["reason"].startswith("time-series store down since ")
            assert "connection refused" in store["reason"] and vm.url not in str(body)
            assert dependency(body, "database")["status"] == "ok"
            print(f"/health named the store {took:.2f} s after it stopped")
            got = await asyncio.to_thread(scrape, f"{c.url}/metrics")
            assert got[("gridwatch_bridge_store_failures", (("store", "sink"),))] >= 3
            assert got[("gridwatch_bridge_store_failures", (("store", "registry"),))] == 0
            assert got[("gridwatch_bridge_ingest_lag_seconds", ())] > 0

            async def unknown_not_silent() -> bool:
                h = await c.health(http)
                LAST[:] = [[(d["device"], d["status"], d["reasons"]) for d in h["devices"]]]
                assert not any(d["status"] == "silent" for d in h["devices"]), h["devices"]
                return all(d["status"] == "unknown" for d in h["devices"])

            # past the devices' silence limit (2 intervals + 1 s), every poll checked: never silent
            await within("devices unknown, never silent", 3 * 1.0 + 1 + 5, unknown_not_silent, t0)
            h = await c.health(http)
            assert h["centre"]["ingesting"] is False and h["centre"]["known"] is True
            assert h["centre"]["reason"].startswith("time-series store down since")
            assert [p["kind"] for p in h["problems"]] == ["centre"]
            assert h["summary"]["devices_unknown"] == 4 and h["summary"]["devices_unhealthy"] == 0
            assert all("the centre is not ingesting" in d["reasons"][0] for d in h["devices"])
            assert all(g["status"] == "online" for g in h["gateways"])  # alerts lane still flows
            out = await asyncio.to_thread(c.cli)
            assert out.returncode == 3, out.stdout + out.stderr
            assert "centre: not ingesting: the centre is not ingesting since" in out.stdout
            assert "time-series store down since" in out.stdout and "silent" not in out.stdout
            assert "4 unknown" in out.stdout

            # the outage's length (what it does is checked above): not a wait for an event
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t0)))
            vm.start()  # the same port, the same data
            back = time.monotonic()

            async def all_ok() -> bool:
                code, body = await health(http, c.url)
                h = await c.health(http)
                LAST[:] = [body["failing"], h["problems"]]
                return code == 200 and bool(h["healthy"]) and h["centre"]["ingesting"]

            took = await within("all ok again", 15, all_ok, back)
            print(f"all ok {took:.2f} s after the store came back")
            out = await asyncio.to_thread(c.cli)
            assert out.returncode == 0, out.stdout + out.stderr
            sent = published(heard)
            assert bridge.stats.write_failures >= 3

            async def none_lost() -> bool:
                missing = sent - await stored(vm, cfg.gateway.id)
                LAST[:] = [len(sent), sorted(missing)[:5]]
                return not missing

            await within("every reading sent is in the store", 15, none_lost)
            print(f"{len(sent)} readings sent, all stored")
    finally:
        vm.stop()


async def test_the_database_down_is_named(mosquitto: Mosquitto, prefix: str) -> None:
    """PostgreSQL stopped under a running centre: the registry still answers /health, and it
    says database down; back, ok."""
    workdir = Path(tempfile.mkdtemp(prefix="gridwatch-pg-"))
    pg = Postgres(workdir).start()
    vm = Victoria(workdir / "vm").start()
    try:
        url = pg.create_database("health")
        async with (
            central(workdir / "c", mosquitto, prefix, vm, db_url=url) as (c, _),
            aiohttp.ClientSession() as http,
        ):
            code, body = await health(http, c.url)
            assert (code, body["status"], body["database"]) == (200, "ok", "postgresql"), body
            pg.stop()
            t0 = time.monotonic()

            async def db_down() -> bool:
                code, body = await health(http, c.url)
                LAST[:] = [code, body]
                db = dependency(body, "database")
                # the first ping may meet a pooled connection cut by the stop; the next, refused
                return code == 503 and db["status"] == "down" and "connection refused" in db[
                    "reason"]  # fmt: skip

            took = await within("/health says database down", 5, db_down, t0)
            code, body = await health(http, c.url)
            db = dependency(body, "database")
            assert body["status"] == "down" and "database" in body["failing"]
            assert db["part"] == "registry" and db["reason"].startswith("database down since ")
            assert body["database"] == db["reason"] and str(pg.port) not in str(body)
            assert "cannot be known while the database is down" in body["bridges"]
            print(f"/health said database down {took:.2f} s after PostgreSQL stopped")
            out = await asyncio.to_thread(c.cli)
            assert out.returncode == 3, out.stdout + out.stderr  # the report needs the database
            pg.start()

            async def ok() -> bool:
                code, body = await health(http, c.url)
                LAST[:] = [code, body["failing"]]
                return code == 200

            await within("ok again", 15, ok)
    finally:
        vm.stop()
        if (pg.data / "postmaster.pid").exists():
            pg.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_a_bridge_in_another_process_is_known_by_its_heartbeat(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """``bridge run`` apart from the registry (as ``registry serve`` runs): the registry knows
    the bridge's dependencies from its heartbeat in the database, names the store when it
    stops, does not call the devices silent; the bridge stopped cleanly is no longer listed."""
    vm = Victoria(tmp_path / "vm").start()
    cfg, devices = field_config(tmp_path, mosquitto, prefix, push=False)
    db = tmp_path / "registry.db"
    bridge_id = f"b-{prefix}"
    proc = None
    try:
        async with registry(tmp_path, db_url=f"sqlite+aiosqlite:///{db}") as reg:
            proc = bridge_process(
                ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(mosquitto.port), "--prefix",
                 prefix, "--influx-url", vm.url, "--data-dir", str(tmp_path / "central"),
                 "--db-url", f"sqlite+aiosqlite:///{db}", "--bridge-id", bridge_id],
                tmp_path / "bridge.log",
            )  # fmt: skip
            c = Centre(reg.url, reg.tokens[Role.MAINTENANCE])
            http = reg.http
            async with SimField(devices, update_s=3600), edge_running(cfg, devices):

                async def field_ok() -> bool:
                    code, body = await health(http, c.url)
                    h = await c.health(http)
                    LAST[:] = [body["failing"], body["bridges"], h["problems"]]
                    seen = len(h["devices"]) == 4 and all(d["last_seen"] for d in h["devices"])
                    return code == 200 and "1 other bridge(s) by their heartbeat" in body[
                        "bridges"] and bool(h["healthy"]) and seen  # fmt: skip

                await within("the field ok, the bridge known by its heartbeat", 60, field_ok)
                vm.stop()
                t0 = time.monotonic()

                async def store_named() -> bool:
                    code, body = await health(http, c.url)
                    LAST[:] = [code, body["failing"]]
                    return f"bridge {bridge_id}: time-series store" in body["failing"]

                # a heartbeat every 2 s: the store is named within one beat of the bridge knowing
                took = await within("/health names the store", 8, store_named, t0)
                print(f"/health (other process) named the store {took:.2f} s after it stopped")

                async def unknown() -> bool:
                    h = await c.health(http)
                    LAST[:] = [[(d["device"], d["status"]) for d in h["devices"]]]
                    assert not any(d["status"] == "silent" for d in h["devices"]), h["devices"]
                    return all(d["status"] == "unknown" for d in h["devices"])

                await within("devices unknown, never silent", 12, unknown, t0)
                vm.start()

                async def ok() -> bool:
                    code, body = await health(http, c.url)
                    h = await c.health(http)
                    LAST[:] = [body["failing"], h["problems"]]
                    return code == 200 and bool(h["healthy"])

                await within("ok again", 20, ok)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
            proc = None
            code, body = await health(http, c.url)
            assert code == 200 and body["bridges"].startswith("no bridge reports to this"), body
            assert not any(d["part"].startswith("bridge") for d in body["dependencies"])
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)
        vm.stop()


async def test_a_crashed_bridge_is_not_heard_from_and_a_restarted_one_is_back(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """A bridge SIGKILLed (a crash: no clean removal of its heartbeat) is reported down once
    its heartbeat is stale, and the centre not ingesting; started again, it is back."""
    db = tmp_path / "registry.db"
    bridge_id = f"b-{prefix}"
    args = ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(mosquitto.port), "--prefix", prefix,
            "--data-dir", str(tmp_path / "central"), "--db-url", f"sqlite+aiosqlite:///{db}",
            "--bridge-id", bridge_id]  # fmt: skip
    proc = None
    try:
        async with registry(tmp_path, db_url=f"sqlite+aiosqlite:///{db}") as reg:
            proc = bridge_process(args, tmp_path / "bridge.log")

            async def known(body: dict[str, Any]) -> bool:
                return "1 other bridge(s) by their heartbeat" in body["bridges"]

            async def up() -> bool:
                code, body = await health(reg.http, reg.url)
                LAST[:] = [code, body["bridges"], body["failing"]]
                return code == 200 and await known(body)

            await within("the bridge known", 10, up)
            proc.kill()
            proc.wait(10)
            proc = None
            t0 = time.monotonic()

            async def not_heard() -> bool:
                code, body = await health(reg.http, reg.url)
                LAST[:] = [code, body["failing"]]
                return code == 503 and body["failing"] == [f"bridge {bridge_id}: bridge"]

            took = await within("the crashed bridge reported", 15 + 2 + 3, not_heard, t0)
            _, body = await health(reg.http, reg.url)
            (d,) = body["dependencies"][1:]
            assert d["reason"].startswith("no report since ") and d["status"] == "down"
            assert d["reason"].endswith("stopped, hung, or cannot reach the database")
            print(f"a crashed bridge reported {took:.1f} s after the kill (stale after 15 s)")
            status, report = await reg.call("GET", "/api/v1/health", Role.MAINTENANCE)
            assert status == 200 and report["centre"]["ingesting"] is False, report
            proc = bridge_process(args, tmp_path / "bridge.log")
            await within("the restarted bridge known", 10, up)
    finally:
        if proc is not None:
            proc.kill()
            proc.wait(10)


async def test_one_of_two_bridges_of_a_share_group_down_is_a_degraded_part_not_an_outage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two bridges in share group ``ingest``, one killed (its heartbeat stale): the other takes
    the whole stream, so the centre is ingesting; /health names the dead member as degraded,
    the health report judges the devices, and ``gridwatch health`` says so and exits 0."""
    now = now_ms()
    here = Location(district="310104", street="漕溪北路", grid="310104014024001")
    birth = Birth(gateway="gw1", session=1, ts=now, devices=["d1"], device_info=[
        DeviceInfo(device="d1", profile="water-level-ultrasonic", interval_s=1, location=here)])  # fmt: skip
    up = LaneState(connected=True, since=now - 60_000)
    member = {"lanes": {"events": up, "telemetry": up}, "store": "influx", "sink": LinkState(),
              "registry": LinkState(), "share_group": "ingest"}  # fmt: skip
    async with registry(tmp_path) as reg:
        await reg.store.apply(Changes(now=now, status=[birth], device_seen={("gw1", "d1"): now}))
        await beat(reg.store, BridgeReport(bridge="b-live", at=now, **member))
        await beat(reg.store, BridgeReport(bridge="b-dead", at=now - 20_000, **member))
        code, body = await health(reg.http, reg.url)
        assert (code, body["status"], body["failing"]) == (503, "degraded",
                                                           ["bridge b-dead: bridge"])  # fmt: skip
        dead = next(d for d in body["dependencies"] if d["part"] == "bridge b-dead")
        assert dead["reason"].endswith("share group ingest ingests without it (bridge b-live)")
        status, report = await reg.call("GET", "/api/v1/health", Role.MAINTENANCE)
        assert status == 200 and report["centre"]["ingesting"] is True, report
        assert [p["kind"] for p in report["problems"]] == [], report
        assert report["centre"]["degraded"] == [f"bridge b-dead: bridge: {dead['reason']}"]
        args = healthcli_args(reg.url, reg.tokens[Role.MAINTENANCE])
        assert await asyncio.to_thread(healthcli.main, args) == exits.OK
        out = capsys.readouterr().out
        assert "centre: degraded, still ingesting: bridge b-dead: bridge: no report since" in out
        assert "not ingesting" not in out


def healthcli_args(url: str, token: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    healthcli.add_arguments(parser)
    return parser.parse_args(["--url", url, "--token", token])


async def test_a_heartbeat_this_registry_cannot_read_is_said_not_dropped(
    tmp_path: Path,
) -> None:
    """A row another version (or anything else) wrote that this registry cannot read: the
    bridge is listed as degraded, with why; the rest of /health still answers."""
    async with registry(tmp_path) as reg:
        async with reg.store.transaction() as s:
            s.add(BridgeHeartbeat(bridge_id="b-future", beat_at=now_ms(),
                                  report={"bridge": "b-future", "lanes": "not a mapping"}))  # fmt: skip
        code, body = await health(reg.http, reg.url)
        assert (code, body["status"], body["failing"]) == (
            503,
            "degraded",
            ["bridge b-future: bridge"],
        )
        (d,) = body["dependencies"][1:]
        assert d["reason"] == "its heartbeat is of another version: this registry cannot read it"


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed")
async def test_the_dashboard_shows_the_failing_dependency_and_no_silent_device(
    tmp_path: Path, artifacts: Path
) -> None:
    """A bridge not heard from for 16 s (its heartbeat stale), two devices without data for
    15 s: the health page shows the dependency that fails and one centre card holding both
    devices, none of them called silent."""
    from playwright.async_api import async_playwright, expect

    now = now_ms()
    here = Location(district="310104", street="漕溪北路", grid="310104014024001")
    birth = Birth(gateway="gw1", session=1, ts=now, devices=["d1", "d2"], device_info=[
        DeviceInfo(device=d, profile="water-level-ultrasonic", interval_s=1, location=here)
        for d in ("d1", "d2")])  # fmt: skip
    up = LaneState(connected=True, since=now - 60_000)
    stale = BridgeReport(bridge="b-east", at=now - 16_000, lanes={"events": up, "telemetry": up},
                         store="influx", sink=LinkState(), registry=LinkState())  # fmt: skip
    async with registry(tmp_path) as reg:
        await reg.store.apply(Changes(now=now, status=[birth]))
        await reg.store.apply(Changes(now=now, device_seen={("gw1", d): now - 15_000
                                                            for d in ("d1", "d2")}))  # fmt: skip
        await beat(reg.store, stale)
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = await browser.new_page(viewport={"width": 390, "height": 844})
                await page.goto(f"{reg.url}/dashboard")
                await page.fill("#token", reg.tokens[Role.MAINTENANCE])
                await page.click("#login-form button[type=submit]")
                deps = page.locator('[data-kind="dependencies"]')
                await expect(deps.locator('[data-dependency="bridge b-east: bridge"]')).to_contain_text(
                    "bridge b-east · bridge: down: no report since")  # fmt: skip
                centre = page.locator('[data-problem="centre"]')
                await expect(centre).to_contain_text("the centre is not ingesting since")
                await expect(centre.locator("li[data-member]")).to_have_count(2)
                await expect(page.locator("#health-summary")).to_have_text(
                    "1 problem · 0 of 2 devices unhealthy (2 unknown: the centre is not "
                    "ingesting) · 0 of 1 gateways unhealthy")  # fmt: skip
                await expect(page.locator(".badge.silent")).to_have_count(0)
                await page.screenshot(path=str(artifacts / "dashboard-health-centre.png"),
                                      full_page=True)  # fmt: skip
            finally:
                await browser.close()
