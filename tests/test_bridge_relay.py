"""An alert does not wait for the centre's stores (issue 17): with the registry's PostgreSQL
down (stopped, crashed or hung) or the time-series store down, a critical alert is on the city
platform topic within a second, once; the registry records it and the gateway gets its Ack when
the database is back; a bridge killed after relaying it does not publish it again.

Real mosquitto, a PostgreSQL cluster of this module's own (stopped and started here), a bridge
in this process or as its own process (``gridwatch bridge run``, killed with SIGKILL)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import shutil
import signal
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge import Bridge, InfluxSink, SqliteSink
from cloud_bridge.ledger import ledger_path
from cloud_bridge.spool import spool_path
from device_registry import RegistryStore
from device_registry.http.auth import SYSTEM
from device_registry.inventory.configgen import Uplink
from device_registry.inventory.provisioning import NoBrokerAccess
from device_registry.inventory.registry import Registry
from device_registry.inventory.requests import DeviceCreate, GatewayCreate
from gridwatch.ground.contract import Ack, AlertEvent, AlertState, Severity, Topics
from gridwatch.ground.gatewayconf import default_profiles_dir
from gridwatch.ground.profiles import load_profiles
from tests._central_helpers import (
    alert,
    batch,
    bridge_config,
    bridge_on,
    bridge_process,
    count_rows,
    now_ms,
    publisher,
    reading,
    running,
)
from tests.fieldkit import Listener, listen
from tests.services import Mosquitto, Postgres, Victoria

LATENCY_S = 1.0  # the bound: within its normal latency, and never beyond a second


@pytest.fixture(scope="module")
def pg() -> Iterator[Postgres]:
    """A cluster of this module's own: its tests stop it. Not under pytest's tmp dir: that is
    private to root, and the server runs as `postgres`."""
    workdir = Path(tempfile.mkdtemp(prefix="gridwatch-pg-relay-"))
    cluster = Postgres(workdir).start()
    yield cluster
    if (cluster.data / "postmaster.pid").exists():
        cluster.stop()
    shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
async def store(pg: Postgres, prefix: str) -> AsyncIterator[RegistryStore]:
    if not (pg.data / "postmaster.pid").exists():
        pg.start()  # a test that failed with the database stopped
    s = await RegistryStore.open(pg.create_database(prefix))
    yield s
    await s.close()


def smoke(gw: str, alert_id: str, ts: int, seq: int) -> AlertEvent:
    """A critical fire alert, as the issue raised it."""
    ev = alert(gw, alert_id, AlertState.RAISED, ts, seq=seq)
    return ev.model_copy(update={"severity": Severity.CRITICAL, "category": "F-01"})


def copies(city: Listener, ev: AlertEvent) -> list[dict[str, Any]]:
    """The platform messages of ``ev``'s transition (its alert id, state and time)."""
    key = (f"{ev.gateway}:{ev.alert_id}", ev.state.value, ev.ts)
    return [doc for _, doc, _ in city.messages if (doc["alert_id"], doc["state"], doc["ts"]) == key]


def acked(seen: Listener, gw: str, stream: str) -> set[int]:
    out: set[int] = set()
    for topic, doc, _ in seen.messages:
        if topic.endswith(f"/gw/{gw}/ack"):
            for first, last in Ack.model_validate(doc).streams.get(stream, []):
                out.update(range(first, last + 1))
    return out


async def on_platform(city: Listener, ev: AlertEvent, since: float) -> float:
    """Seconds from ``since`` until ``ev`` is on the platform topic."""
    await city.wait_for(lambda c: copies(c, ev), within_s=10)
    return time.monotonic() - since


async def poll(check: Any, within_s: float = 15.0) -> None:
    """Another process's progress (a file it writes): poll it, with a deadline."""
    async with asyncio.timeout(within_s):
        while not await asyncio.to_thread(check):  # noqa: ASYNC110
            await asyncio.sleep(0.02)


def processes(pg: Postgres) -> list[int]:
    """The server's postmaster and its children (one backend per connection)."""
    postmaster = int((pg.data / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    return [postmaster, *children]


@contextlib.contextmanager
def outage(pg: Postgres, how: str) -> Iterator[Callable[[], None]]:
    """Take the registry's database away ``how``; yields what brings it back (once)."""
    if how == "hang":  # a network partition, a stuck server: connections open, no answer
        frozen = processes(pg)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        back = functools.partial(_resume, frozen)
    else:
        pg.stop({"crash": "immediate", "shutdown": "fast"}[how])
        back = pg.start
    done = False

    def bring_back() -> None:
        nonlocal done
        if not done:
            done = True
            back()

    try:
        yield bring_back
    finally:
        bring_back()


def _resume(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@pytest.mark.parametrize("how", ["crash", "shutdown", "hang"])
async def test_alert_reaches_the_platform_within_a_second_while_the_registry_db_is_down(
    mosquitto: Mosquitto, pg: Postgres, store: RegistryStore, sink: SqliteSink, prefix: str,
    tmp_path: Path, how: str,
) -> None:  # fmt: skip
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    before, during = smoke(gw, "before", t, seq=1), smoke(gw, "fire", t + 1, seq=2)
    readings = batch(gw, [reading("d1", "level", 4.5, t + 2)], seq=1)
    cfg = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path)
    async with (
        listen(mosquitto.port, topics.platform_alerts()) as city,
        listen(mosquitto.port, topics.ack(gw)) as acks,
        bridge_on(cfg, store, sink) as b,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        await pub.publish(topics.alert(gw), before.model_dump_json(), qos=1)
        await acks.wait_for(lambda s: acked(s, gw, "alert") == {1})

        with outage(pg, how) as back:
            sent = time.monotonic()
            await pub.publish(topics.alert(gw), during.model_dump_json(), qos=1)
            latency = await on_platform(city, during, sent)
            print(f"\nalert latency, registry database down ({how}): {latency * 1000:.0f} ms")
            assert latency < LATENCY_S
            assert acked(acks, gw, "alert") == {1}  # not recorded yet: no Ack
            await pub.publish(topics.telemetry(gw), readings.model_dump_json(), qos=1)
            await poll(lambda: b.relays >= 2)  # the telemetry step waited too
            if how != "hang":  # failed: telemetry reaches the time-series store all the same
                # (hung, only slow: it waits, as it has no seen ids to drop a redelivery by)
                await poll(lambda: count_rows(tmp_path / "telemetry.db", "samples") == 1)
            back()
        await acks.wait_for(lambda s: acked(s, gw, "alert") == {1, 2}, within_s=30)
        await acks.wait_for(lambda s: acked(s, gw, "telemetry") == {1}, within_s=30)
    stored = {a.alert_id: a.severity for a in await store.alerts()}
    assert stored == {f"{gw}:before": "critical", f"{gw}:fire": "critical"}
    assert count_rows(tmp_path / "telemetry.db", "samples") == 1
    # the Ack came after the step that published nothing again: the platform has it once
    assert (len(copies(city, before)), len(copies(city, during))) == (1, 1)


async def test_telemetry_written_while_the_registry_db_is_down_keeps_its_place_labels(
    mosquitto: Mosquitto, pg: Postgres, store: RegistryStore, sink: SqliteSink, prefix: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The readings written ahead of the registry land in the series the device had before the
    outage (its district, street, grid and unit), not in a series of their own."""
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    reg = Registry(store, NoBrokerAccess(), Uplink(),
                   lambda: load_profiles(default_profiles_dir()), lambda _gw: None)  # fmt: skip
    bus = {"type": "modbus_tcp", "id": "cabinet", "host": "10.0.0.5", "port": 502}
    await reg.add_gateway(GatewayCreate.model_validate({"id": gw, "buses": [bus]}), SYSTEM)
    await reg.add_device(DeviceCreate.model_validate(
        {"gateway": gw, "id": "d1", "profile": "water-level-ultrasonic", "bus": "cabinet",
         "unit_id": 1, "location": {"district": "310104", "street": "漕溪北路",
                                    "grid": "310104014024001"}}), SYSTEM)  # fmt: skip
    cfg = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path)
    db = tmp_path / "telemetry.db"
    async with (
        listen(mosquitto.port, topics.ack(gw)) as acks,
        bridge_on(cfg, store, sink) as b,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        first = batch(gw, [reading("d1", "level", 4.5, t)], seq=1)
        await pub.publish(topics.telemetry(gw), first.model_dump_json(), qos=1)
        await acks.wait_for(lambda s: acked(s, gw, "telemetry") == {1})
        with outage(pg, "crash") as back:
            during = batch(gw, [reading("d1", "level", 4.6, t + 1000)], seq=2)
            await pub.publish(topics.telemetry(gw), during.model_dump_json(), qos=1)
            await poll(lambda: b.relays >= 1 and count_rows(db, "samples") == 2)
            back()
        await acks.wait_for(lambda s: acked(s, gw, "telemetry") == {1, 2}, within_s=30)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT value, district, street, grid, unit FROM samples "
                            "ORDER BY ts").fetchall()  # fmt: skip
    place = ("310104", "漕溪北路", "310104014024001", "m")
    assert rows == [(4.5, *place), (4.6, *place)]


async def test_a_bridge_killed_after_relaying_does_not_publish_the_alert_again(
    mosquitto: Mosquitto, pg: Postgres, store: RegistryStore, sink: SqliteSink, prefix: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    fire = smoke(gw, "fire", t, seq=1)
    bridge_id = f"b-{prefix}"
    ledger = ledger_path(tmp_path, bridge_id)
    url = store.engine.url.render_as_string(hide_password=False)
    args = ["--mqtt-host", mosquitto.host, "--mqtt-port", str(mosquitto.port), "--prefix", prefix,
            "--data-dir", str(tmp_path), "--bridge-id", bridge_id, "--db-url", url,
            "--mqtt-protocol", "5"]  # fmt: skip
    async with (
        listen(mosquitto.port, topics.platform_alerts()) as city,
        listen(mosquitto.port, topics.ack(gw)) as acks,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        # a process's start (imports, the registry's schema check) takes 10-20 s on a busy
        # machine: its deadline is generous
        proc = bridge_process(args, tmp_path / "bridge.log", within_s=60)
        try:
            pg.stop()
            sent = time.monotonic()
            await pub.publish(topics.alert(gw), fire.model_dump_json(), qos=1)
            latency = await on_platform(city, fire, sent)
            print(f"\nalert latency from a bridge process, database down: {latency * 1000:.0f} ms")
            assert latency < LATENCY_S
            await poll(lambda: ledger.exists() and count_rows(ledger, "published") == 1)
        finally:
            os.kill(proc.pid, signal.SIGKILL)  # a crash: no farewell, the alert unacknowledged
            proc.wait(10)
        # the same bridge again (its id, its data dir), the database still down: the broker
        # redelivers the alert, the relay finds it published
        cfg = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path,
                            client_id=bridge_id, mqtt_protocol="5")  # fmt: skip
        async with running(Bridge(cfg, store, sink)) as b:
            async with asyncio.timeout(10):
                await b.until(lambda s: s.received == 1, live=True)
            async with asyncio.timeout(10):
                while b.relays == 0:  # noqa: ASYNC110 - a counter, not an event
                    await asyncio.sleep(0.02)
            assert copies(city, fire) != [] and b.stats.alerts_published == 0
            pg.start()
            await acks.wait_for(lambda s: acked(s, gw, "alert") == {1}, within_s=30)
            assert b.stats.alerts_published == 0
    assert [a.alert_id for a in await store.alerts()] == [f"{gw}:fire"]
    assert len(copies(city, fire)) == 1


async def test_alert_reaches_the_platform_within_a_second_while_the_time_series_store_is_down(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    fire = smoke(gw, "fire", t + 1, seq=1)
    readings = batch(gw, [reading("d1", "level", 4.5, t)], seq=1)
    vm = Victoria(tmp_path / "vm").start()
    store = await RegistryStore.open(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    influx = InfluxSink(vm.url, "b", "o", "t")
    try:
        async with (
            listen(mosquitto.port, topics.platform_alerts()) as city,
            listen(mosquitto.port, topics.ack(gw)) as acks,
            bridge_on(bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path), store,
                      influx) as b,
            publisher(mosquitto.host, mosquitto.port) as pub,
        ):  # fmt: skip
            vm.stop()
            await pub.publish(topics.telemetry(gw), readings.model_dump_json(), qos=1)
            await b.until(lambda s: s.write_failures >= 1, live=True)  # the store is down
            sent = time.monotonic()
            await pub.publish(topics.alert(gw), fire.model_dump_json(), qos=1)
            latency = await on_platform(city, fire, sent)
            print(f"\nalert latency with the time-series store down: {latency * 1000:.0f} ms")
            assert latency < LATENCY_S
            await acks.wait_for(lambda s: acked(s, gw, "alert") == {1})  # recorded meanwhile
            vm.start()  # same port, same data
            await acks.wait_for(lambda s: acked(s, gw, "telemetry") == {1}, within_s=30)
        rows = await asyncio.to_thread(vm.export, f'gridwatch_value{{gateway="{gw}"}}')
        assert [r["values"] for r in rows] == [[4.5]]
        assert len(copies(city, fire)) == 1
    finally:
        await influx.close()
        await store.close()
        vm.stop()


async def test_an_alert_behind_a_full_receive_window_goes_out_from_the_spool(
    mosquitto: Mosquitto, pg: Postgres, store: RegistryStore, sink: SqliteSink, prefix: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The broker sends a session at most its Receive Maximum of unacknowledged messages: with
    the registry down, the events lane holds what it receives in its spool and acknowledges it,
    so an alert behind more than that many messages still goes out at once; all are recorded
    when the database is back, and the spool is empty."""
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    minor = [alert(gw, f"m{i}", AlertState.RAISED, t + i, seq=i + 1) for i in range(30)]
    fire = smoke(gw, "fire", t + 100, seq=31)
    cfg = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path, max_unacked=10,
                        mqtt_protocol="5")  # fmt: skip
    async with (
        listen(mosquitto.port, topics.platform_alerts()) as city,
        listen(mosquitto.port, topics.ack(gw)) as acks,
        bridge_on(cfg, store, sink),
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        with outage(pg, "crash") as back:
            for ev in minor:
                await pub.publish(topics.alert(gw), ev.model_dump_json(), qos=1)
            sent = time.monotonic()
            await pub.publish(topics.alert(gw), fire.model_dump_json(), qos=1)
            latency = await on_platform(city, fire, sent)
            print(
                f"\nalert latency behind 30 messages, receive maximum 10: {latency * 1000:.0f} ms"
            )
            assert latency < LATENCY_S
            assert acked(acks, gw, "alert") == set()
            back()
        await acks.wait_for(lambda s: acked(s, gw, "alert") == set(range(1, 32)), within_s=30)
    assert len(await store.alerts(limit=100)) == 31
    assert count_rows(spool_path(tmp_path, cfg.client_id), "held") == 0
    assert [len(copies(city, ev)) for ev in [*minor, fire]] == [1] * 31


async def test_a_bridge_stopped_with_a_full_spool_ingests_it_when_it_runs_again(
    mosquitto: Mosquitto, pg: Postgres, store: RegistryStore, sink: SqliteSink, prefix: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """What the spool holds was acknowledged to the broker: only the spool has it. A bridge
    stopped during the outage ingests it when it runs again (its id, its data dir), before
    anything newer; each alert is on the platform once."""
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    minor = [alert(gw, f"m{i}", AlertState.RAISED, t + i, seq=i + 1) for i in range(30)]
    cfg = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path, max_unacked=10,
                        mqtt_protocol="5")  # fmt: skip
    spool = spool_path(tmp_path, cfg.client_id)
    async with (
        listen(mosquitto.port, topics.platform_alerts()) as city,
        listen(mosquitto.port, topics.ack(gw)) as acks,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        with outage(pg, "crash") as back:
            async with bridge_on(cfg, store, sink) as first:
                for ev in minor:
                    await pub.publish(topics.alert(gw), ev.model_dump_json(), qos=1)
                await city.wait_for(lambda c: all(copies(c, ev) for ev in minor))
                # the city may see an alert before the bridge has its PUBACK and the record:
                # stopped in that window, a bridge publishes it again (docs/central.md)
                # (live counts are told at each retry of the registry: the backoff's 5 s at most)
                async with asyncio.timeout(15):
                    await first.until(lambda s: s.alerts_published >= len(minor), live=True)
                held = count_rows(spool, "held")
                assert held >= 20  # past the receive window: acknowledged, in the spool only
            back()
        async with bridge_on(cfg, store, sink) as again:
            await acks.wait_for(lambda s: acked(s, gw, "alert") == set(range(1, 31)), within_s=30)
            assert again.stats.alerts_published == 0
    assert len(await store.alerts(limit=100)) == 30
    assert count_rows(spool, "held") == 0
    assert [len(copies(city, ev)) for ev in minor] == [1] * 30


async def test_two_bridges_of_a_share_group_publish_a_resent_alert_once(
    mosquitto: Mosquitto, pg: Postgres, store: RegistryStore, sink: SqliteSink, prefix: str,
    tmp_path: Path,
) -> None:  # fmt: skip
    """The database is down past the gateway's ack timeout: the gateway sends the alert again
    and the share group hands the resend to the other bridge, whose own ledger never saw it.
    The bridges tell each other what they published (``claims.py``): the platform has it
    once, during the outage and after it."""
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    fire, after = smoke(gw, "fire", t, seq=1), smoke(gw, "after", t + 1, seq=2)
    cfgs = [bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path / name,
                          client_id=f"{name}-{prefix}", share_group="ingest",
                          mqtt_protocol="5") for name in ("a", "b")]  # fmt: skip
    async with (
        listen(mosquitto.port, topics.platform_alerts()) as city,
        listen(mosquitto.port, topics.ack(gw)) as acks,
        bridge_on(cfgs[0], store, sink) as a,
        bridge_on(cfgs[1], store, sink) as b,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        with outage(pg, "crash") as back:
            sends = 0
            # the gateway's resends (every ack timeout) until each bridge has been handed one;
            # the group takes turns, so two or three sends do it
            while a.stats.received == 0 or b.stats.received == 0:
                assert sends < 6, "the share group never handed the alert to both bridges"
                await pub.publish(topics.alert(gw), fire.model_dump_json(), qos=1)
                sends += 1
                await poll(lambda n=sends: a.relays + b.relays >= n)  # type: ignore[misc]
            assert len(copies(city, fire)) == 1
            back()
        await acks.wait_for(lambda s: 1 in acked(s, gw, "alert"), within_s=30)
        # once the registry is back, a resend is a duplicate the registry knows
        await pub.publish(topics.alert(gw), fire.model_dump_json(), qos=1)
        await pub.publish(topics.alert(gw), after.model_dump_json(), qos=1)
        await acks.wait_for(lambda s: acked(s, gw, "alert") == {1, 2}, within_s=30)
        await city.wait_for(lambda c: copies(c, after))
    assert (len(copies(city, fire)), len(copies(city, after))) == (1, 1)


async def test_the_gap_audit_logs_one_line_per_database_outage(
    mosquitto: Mosquitto, pg: Postgres, store: RegistryStore, sink: SqliteSink, prefix: str,
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """A member of a share group audits for gaps every ``gap_audit_s`` (5 s): during a database
    outage that is one ERROR when it starts and one INFO when it ends, not a WARNING per audit."""
    caplog.set_level(logging.DEBUG, logger="cloud_bridge.bridge")
    cfg = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path, share_group="g",
                        mqtt_protocol="5", gap_audit_s=0.05)  # fmt: skip

    def audits(level: int) -> list[logging.LogRecord]:
        return [r for r in caplog.records
                if r.getMessage().startswith("bridge gap audit") and r.levelno >= level]  # fmt: skip

    async with bridge_on(cfg, store, sink):
        with outage(pg, "crash") as back:
            await poll(lambda: len(audits(logging.DEBUG)) >= 5)  # five audits met the outage
            back()
        await poll(
            lambda: any("registry is back" in r.getMessage() for r in audits(logging.INFO)), 30
        )
    assert [r.levelname for r in audits(logging.INFO)] == ["ERROR", "INFO"]
    assert not [r for r in caplog.records if "gap audit skipped" in r.getMessage()]
