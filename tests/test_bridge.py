"""The bridge against real mosquitto and VictoriaMetrics: telemetry, dedupe, quarantine, alerts,
session state, and at-least-once delivery across a time-series store outage and a bridge restart."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cloud_bridge import Bridge, InfluxSink, SqliteSink
from cloud_bridge.broker import embedded_broker
from device_registry import RegistryStore
from gridwatch.ground.contract import (
    AlertState,
    DeviceHealth,
    GatewayHealth,
    PlatformAlert,
    Quality,
    Topics,
    new_id,
)
from tests._central_helpers import (
    alert,
    batch,
    birth,
    bridge_config,
    bridge_on,
    death,
    now_ms,
    publisher,
    reading,
    until,
)
from tests.services import Mosquitto, Victoria, free_port


@pytest.fixture
async def influx(victoria: Victoria) -> AsyncIterator[InfluxSink]:
    sink = InfluxSink(victoria.url)
    yield sink
    await sink.close()


async def export(
    victoria: Victoria, gateway: str, samples: int
) -> dict[tuple[str, str, str], list[tuple[int, float]]]:
    """The gateway's series once at least ``samples`` samples are searchable.

    VictoriaMetrics answers a write before the rows are searchable (it buffers them for about a
    second, and /internal/force_flush does not cover the newest), so this polls with a deadline.
    """
    async with asyncio.timeout(10):
        while True:
            rows = await asyncio.to_thread(
                victoria.export, f'gridwatch_value{{gateway="{gateway}"}}'
            )
            if sum(len(r["values"]) for r in rows) >= samples:
                break
            await asyncio.sleep(0.1)
    return {
        (r["metric"]["device"], r["metric"]["point"], r["metric"]["quality"]):
            sorted(zip(r["timestamps"], r["values"], strict=True))
        for r in rows
    }  # fmt: skip


async def test_telemetry_lands_in_victoria_with_values_and_timestamps(
    mosquitto: Mosquitto, victoria: Victoria, influx: InfluxSink, store: RegistryStore,
    prefix: str, tmp_path: Path,
) -> None:  # fmt: skip
    gw, t = prefix, now_ms()
    msg = batch(gw, [
        reading("d1", "level", 1.25, t), reading("d1", "level", 1.5, t + 1000),
        reading("d2", "alarm", True, t), reading("d2", "label", "hello", t),
        reading("d3", "level", None, t, Quality.COMM_ERROR),
        reading("d1", "temp=x north,1", -3, t),  # needs line-protocol escaping
    ])  # fmt: skip
    topics = Topics(prefix)
    async with bridge_on(
        bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path), store, influx
    ) as b:
        async with publisher(mosquitto.host, mosquitto.port) as pub:
            await pub.publish(topics.telemetry(gw), msg.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["telemetry"] >= 1)
    assert await export(victoria, gw, 4) == {
        ("d1", "level", "good"): [(t, 1.25), (t + 1000, 1.5)],
        ("d2", "alarm", "good"): [(t, 1.0)],
        ("d1", "temp=x north,1", "good"): [(t, -3.0)],
    }
    assert (b.stats.points_written, b.stats.points_skipped) == (4, 2)
    devices = {d.id: d for d in await store.devices(gateway=gw)}
    assert devices[f"{gw}:d1"].last_seen == t + 1000
    assert devices[f"{gw}:d1"].values["level"].value == 1.5
    assert devices[f"{gw}:d2"].values["label"].value == "hello"
    assert devices[f"{gw}:d3"].last_seen is None  # a failed read is no sign of life
    assert devices[f"{gw}:d3"].values["level"].quality == "comm_error"


async def test_same_batch_twice_is_written_once(
    mosquitto: Mosquitto, victoria: Victoria, influx: InfluxSink, store: RegistryStore,
    prefix: str, tmp_path: Path,
) -> None:  # fmt: skip
    gw, t = prefix, now_ms()
    payload = batch(gw, [reading("d1", "level", 2.0, t)]).model_dump_json()
    async with (
        bridge_on(
            bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path), store, influx
        ) as b,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        await pub.publish(Topics(prefix).telemetry(gw), payload, qos=1)
        await until(b, lambda s: s.ingested["telemetry"] == 1)
        await pub.publish(Topics(prefix).telemetry(gw), payload, qos=1)
        await until(b, lambda s: s.duplicates == 1)
    assert await export(victoria, gw, 1) == {("d1", "level", "good"): [(t, 2.0)]}
    assert b.stats.points_written == 1


class _LateLookup(RegistryStore):
    """A registry that commits the first step only once the second step's seen-id lookup has
    read, and answers that lookup only after the commit: a slow database under load, which the
    fault tests hit."""

    bridge: Bridge | None = None
    lookups = 0

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.second_read, self.committing = asyncio.Event(), asyncio.Event()

    async def seen(self, ids: Collection[str]) -> set[str]:
        found = await super().seen(ids)
        self.lookups += 1
        if self.lookups == 2 and self.bridge is not None:
            self.second_read.set()
            await until(self.bridge, lambda s: s.ingested["telemetry"] == 1)
        return found

    async def apply(self, *args: Any, **kw: Any) -> Any:
        self.committing.set()
        await self.second_read.wait()
        return await super().apply(*args, **kw)


async def test_a_redelivery_looked_up_while_its_first_copy_commits_is_written_once(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    gw, t = prefix, now_ms()
    payload = batch(gw, [reading("d1", "level", 2.0, t)]).model_dump_json()
    store = await _LateLookup.open(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    sink = await SqliteSink.open(tmp_path / "telemetry.db")
    cfg = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path, registry_window_s=0.5)
    try:
        async with (
            bridge_on(cfg, store, sink) as b,
            publisher(mosquitto.host, mosquitto.port) as pub,
        ):
            store.bridge = b
            await pub.publish(Topics(prefix).telemetry(gw), payload, qos=1)
            async with asyncio.timeout(10):
                await store.committing.wait()  # the first copy is written and committing
            await pub.publish(Topics(prefix).telemetry(gw), payload, qos=1)
            await until(b, lambda s: s.ingested["telemetry"] + s.duplicates == 2)
        assert (b.stats.ingested["telemetry"], b.stats.duplicates) == (1, 1)
        assert b.stats.points_written == 1
    finally:
        await sink.close()
        await store.close()


async def test_garbage_is_counted_and_quarantined_and_good_messages_still_flow(
    mosquitto: Mosquitto, victoria: Victoria, influx: InfluxSink, store: RegistryStore,
    prefix: str, tmp_path: Path,
) -> None:  # fmt: skip
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    good = batch(gw, [reading("d1", "level", 7.5, t)])
    wrong_schema = json.dumps({"v": 1, "id": "x", "gateway": gw, "seq": 1, "session": 1})
    future = good.model_dump_json().replace('"v":1', '"v":2')
    async with bridge_on(
        bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path), store, influx
    ) as b:
        async with publisher(mosquitto.host, mosquitto.port) as pub:
            await pub.publish(topics.telemetry(gw), b"\x00not json{", qos=1)
            await pub.publish(topics.alert(gw), wrong_schema, qos=1)
            await pub.publish(topics.telemetry("someone-else"), good.model_dump_json(), qos=1)
            await pub.publish(topics.health(gw), future, qos=1)
            await pub.publish(topics.telemetry(gw), good.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["telemetry"] == 1)
    assert dict(b.stats.rejected) == {
        "bad_json": 1,
        "bad_schema": 1,
        "gateway_mismatch": 1,
        "bad_version": 1,
    }
    kept = await store.quarantine()
    assert sorted((q.topic, q.reason) for q in kept) == sorted([
        (topics.telemetry(gw), "bad_json"), (topics.alert(gw), "bad_schema"),
        (topics.telemetry("someone-else"), "gateway_mismatch"), (topics.health(gw), "bad_version"),
    ])  # fmt: skip
    assert await export(victoria, gw, 1) == {("d1", "level", "good"): [(t, 7.5)]}


async def test_alert_raised_gives_exactly_one_platform_alert(
    mosquitto: Mosquitto, influx: InfluxSink, store: RegistryStore, prefix: str, tmp_path: Path
) -> None:
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    raised = alert(gw, "a-1", AlertState.RAISED, t, seq=1)
    cleared = alert(gw, "a-1", AlertState.CLEARED, t + 5000, value=2.1, seq=2)
    async with (
        bridge_on(
            bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path), store, influx
        ) as b,
        aiomqtt.Client(mosquitto.host, mosquitto.port) as city,
    ):
        await city.subscribe(topics.platform_alerts(), qos=1)
        async with publisher(mosquitto.host, mosquitto.port) as pub:
            await pub.publish(topics.alert(gw), raised.model_dump_json(), qos=1)
            await pub.publish(topics.alert(gw), raised.model_dump_json(), qos=1)  # redelivery
            await until(b, lambda s: s.duplicates == 1)
            active = await store.alerts(active_only=True)
            await pub.publish(topics.alert(gw), cleared.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["alert"] == 2)
        got = []
        async with asyncio.timeout(10):
            async for m in city.messages:
                got.append((m.topic.value, PlatformAlert.model_validate_json(m.payload)))
                if len(got) == 2:
                    break
    # the duplicate would have come between the two: same topic, so in order
    assert [(topic, a.alert_id, a.state) for topic, a in got] == [
        (f"{prefix}/platform/alert/north/W-01/major", f"{gw}:a-1", AlertState.RAISED),
        (f"{prefix}/platform/alert/north/W-01/major", f"{gw}:a-1", AlertState.CLEARED),
    ]
    assert got[0][1].gateway == gw and got[0][1].location.grid == "G7"
    assert [(a.alert_id, a.state) for a in active] == [(f"{gw}:a-1", "raised")]
    assert await store.alerts(active_only=True) == []
    [done] = await store.alerts(active_only=False)
    assert (done.state, done.cleared_at, done.transitions, done.value) == (
        "cleared",
        t + 5000,
        2,
        2.1,
    )


async def test_death_marks_devices_stale_and_birth_online_again(
    mosquitto: Mosquitto, influx: InfluxSink, store: RegistryStore, prefix: str, tmp_path: Path
) -> None:
    gw, t = prefix, now_ms()
    topics = Topics(prefix)

    async def statuses() -> dict[str, str]:
        return {d.device: d.status for d in await store.devices(gateway=gw)}

    async with (
        bridge_on(
            bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path), store, influx
        ) as b,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        await pub.publish(
            topics.status(gw), birth(gw, 1, ["d1", "d2"]).model_dump_json(), qos=1, retain=True
        )
        await pub.publish(
            topics.telemetry(gw),
            batch(gw, [reading("d1", "level", 1.0, t)]).model_dump_json(),
            qos=1,
        )
        await until(b, lambda s: s.ingested["telemetry"] == 1 and s.ingested["birth"] == 1)
        assert await statuses() == {"d1": "online", "d2": "online"}
        await pub.publish(topics.status(gw), death(gw, 1).model_dump_json(), qos=1, retain=True)
        await until(b, lambda s: s.ingested["death"] == 1)
        assert await statuses() == {"d1": "stale", "d2": "stale"}
        [gateway] = await store.gateways()
        assert not gateway.online and gateway.died_at is not None
        await pub.publish(
            topics.status(gw), birth(gw, 2, ["d1", "d2"]).model_dump_json(), qos=1, retain=True
        )
        await until(b, lambda s: s.ingested["birth"] == 2)
        assert await statuses() == {"d1": "online", "d2": "online"}
        # a late will of the previous session changes nothing
        await pub.publish(topics.status(gw), death(gw, 1).model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["death"] == 2)
        assert await statuses() == {"d1": "online", "d2": "online"}
        await pub.publish(topics.status(gw), b"", qos=1, retain=True)  # clear the retained status


async def test_sequence_gaps_are_counted(
    mosquitto: Mosquitto, influx: InfluxSink, store: RegistryStore, prefix: str, tmp_path: Path
) -> None:
    gw, t = prefix, now_ms()
    async with (
        bridge_on(
            bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path), store, influx
        ) as b,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        for seq in (1, 2, 5, 6):
            msg = batch(gw, [reading("d1", "level", float(seq), t + seq)], seq=seq)
            await pub.publish(Topics(prefix).telemetry(gw), msg.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["telemetry"] == 4)
    assert (b.stats.gaps, b.stats.missing) == (1, 2)


async def test_nothing_lost_across_a_store_outage_and_a_bridge_restart(
    mosquitto: Mosquitto, store: RegistryStore, prefix: str, tmp_path: Path
) -> None:
    """Messages are acknowledged only once written: a bridge that dies while the time-series
    store is down leaves them with the broker, and the next bridge (same session) writes them."""
    vm = Victoria(tmp_path / "vm")  # not started yet: the store is down
    sink = InfluxSink(vm.url)
    gw, t = prefix, now_ms()
    cfg = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path)
    msgs = [batch(gw, [reading("d1", "level", float(i), t + i)]) for i in range(5)]
    try:
        async with (
            bridge_on(cfg, store, sink) as b,
            publisher(mosquitto.host, mosquitto.port) as pub,
        ):
            for m in msgs:
                await pub.publish(Topics(prefix).telemetry(gw), m.model_dump_json(), qos=1)
            await until(b, lambda s: s.write_failures >= 2, live=True)
            assert b.stats.points_written == 0
        # the first bridge is gone without acknowledging; the store comes back
        await asyncio.to_thread(vm.start)
        async with bridge_on(cfg, store, sink) as b2:
            await until(b2, lambda s: s.ingested["telemetry"] == 5)
        rows = await export(vm, gw, 5)
        assert rows == {("d1", "level", "good"): [(t + i, float(i)) for i in range(5)]}
    finally:
        await sink.close()
        vm.stop()


async def either_until(bridges: tuple[Bridge, ...], done: Callable[[], bool]) -> None:
    """Until ``done`` holds; each bridge wakes on its own progress only, so wait on all."""
    waiters = [asyncio.create_task(b.until(lambda _: done())) for b in bridges]
    try:
        async with asyncio.timeout(10):
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def test_shared_subscription_splits_the_load(
    mosquitto: Mosquitto, victoria: Victoria, influx: InfluxSink, store: RegistryStore,
    prefix: str, tmp_path: Path,
) -> None:  # fmt: skip
    gw, t = prefix, now_ms()
    cfgs = [bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path, share_group="g",
                          client_id=f"{prefix}-{i}", gap_audit_s=0.2, gap_settle_s=0.4)
            for i in (1, 2)]  # fmt: skip
    seqs = [q for q in range(1, 23) if q not in (7, 13)]  # the gateway lost two messages
    async with (
        bridge_on(cfgs[0], store, influx) as b1,
        bridge_on(cfgs[1], store, influx) as b2,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        for i, seq in enumerate(seqs):
            msg = batch(gw, [reading("d1", "level", float(i), t + i)], seq=seq)
            await pub.publish(Topics(prefix).telemetry(gw), msg.model_dump_json(), qos=1)

        await either_until((b1, b2), lambda: sum(b.committed.ingested["telemetry"]
                                                 for b in (b1, b2)) == 20)  # fmt: skip
        # neither bridge saw a whole stream; their audit of the registry finds both holes once
        await either_until((b1, b2), lambda: b1.committed.gaps + b2.committed.gaps >= 2)
        await asyncio.sleep(3 * 0.2)  # three more audits each: nothing is reported twice
    assert b1.stats.ingested["telemetry"] > 0 and b2.stats.ingested["telemetry"] > 0
    assert b1.stats.gaps + b2.stats.gaps == 2
    assert b1.stats.missing + b2.stats.missing == 2
    rows = await export(victoria, gw, 20)
    assert len(rows[("d1", "level", "good")]) == 20


async def test_sqlite_sink_keeps_history_idempotently(tmp_path: Path) -> None:
    sink = await SqliteSink.open(tmp_path / "telemetry.db", retention_hours=1)
    t = now_ms()
    msg = batch("g", [reading("d1", "level", 1.0, t - 7_200_000), reading("d1", "level", 2.0, t)])
    try:
        assert await sink.write([msg]) == (2, 0)
        await sink.write([msg])  # a redelivery
        assert await sink.history("g", "d1", "level") == [
            (t - 7_200_000, 1.0, "good"),
            (t, 2.0, "good"),
        ]
        await sink.maintain(t)
        assert await sink.history("g", "d1", "level") == [(t, 2.0, "good")]
    finally:
        await sink.close()


async def test_bridge_on_a_postgresql_registry(
    mosquitto: Mosquitto, pg_url: str, prefix: str, tmp_path: Path
) -> None:
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    store = await RegistryStore.open(pg_url)
    sink = await SqliteSink.open(tmp_path / "telemetry.db")
    report = GatewayHealth(
        id=new_id(), gateway=gw, seq=1, session=1, ts=t, cpu_percent=5.0, outbox_depth=3,
        devices=[DeviceHealth(device="d1", online=True, reads_ok=10, response_ms=4.2)],
    )  # fmt: skip
    try:
        async with (
            bridge_on(
                bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path), store, sink
            ) as b,
            publisher(mosquitto.host, mosquitto.port) as pub,
        ):
            await pub.publish(topics.status(gw), birth(gw, 1, ["d1"]).model_dump_json(), qos=1)
            await pub.publish(
                topics.telemetry(gw),
                batch(gw, [reading("d1", "level", 1.0, t)]).model_dump_json(),
                qos=1,
            )
            await pub.publish(
                topics.alert(gw), alert(gw, "a9", AlertState.RAISED, t).model_dump_json(), qos=1
            )
            await pub.publish(topics.health(gw), report.model_dump_json(), qos=1)
            await pub.publish(topics.status(gw), death(gw, 1).model_dump_json(), qos=1)
            await until(
                b,
                lambda s: (
                    s.ingested == {"birth": 1, "telemetry": 1, "alert": 1, "health": 1, "death": 1}
                ),
            )
        [dev] = await store.devices(district="north")
        assert (dev.id, dev.status, dev.last_seen, dev.values["level"].value) == (
            f"{gw}:d1",
            "stale",
            t,
            1.0,
        )
        assert dev.health is not None and dev.health["response_ms"] == 4.2
        [g] = await store.gateways()
        assert g.health is not None and g.health["outbox_depth"] == 3 and not g.online
        assert [a.alert_id for a in await store.alerts()] == [f"{gw}:a9"]
        assert await sink.history(gw, "d1", "level") == [(t, 1.0, "good")]
    finally:
        await sink.close()
        await store.close()


async def test_an_alert_does_not_wait_for_a_stuck_telemetry_write(
    mosquitto: Mosquitto, store: RegistryStore, prefix: str, tmp_path: Path
) -> None:
    """Telemetry and events have their own MQTT sessions: with the time-series store down and
    telemetry piling up unacknowledged, an alert still reaches the city platform at once."""
    down = InfluxSink(Victoria(tmp_path / "vm").url)  # never started
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    try:
        async with (
            bridge_on(
                bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path), store, down
            ) as b,
            aiomqtt.Client(mosquitto.host, mosquitto.port) as city,
            publisher(mosquitto.host, mosquitto.port) as pub,
        ):
            await city.subscribe(topics.platform_alerts(), qos=1)
            for i in range(5):
                msg = batch(gw, [reading("d1", "level", float(i), t + i)])
                await pub.publish(topics.telemetry(gw), msg.model_dump_json(), qos=1)
            await until(b, lambda s: s.write_failures >= 1, live=True)
            ev = alert(gw, "a-now", AlertState.RAISED, t)
            await pub.publish(topics.alert(gw), ev.model_dump_json(), qos=1)
            async with asyncio.timeout(5):
                got = await anext(aiter(city.messages))
            assert PlatformAlert.model_validate_json(got.payload).alert_id == f"{gw}:a-now"
            assert b.stats.points_written == 0
    finally:
        await down.close()


async def test_bridge_falls_back_to_mqtt311_on_the_embedded_broker(
    store: RegistryStore, prefix: str, tmp_path: Path
) -> None:
    """amqtt (the demo's broker) ignores an MQTT 5 CONNECT: with ``auto`` both lanes fall back to
    3.1.1 and ingest."""
    port, gw, t = free_port(), prefix, now_ms()
    sink = await SqliteSink.open(tmp_path / "telemetry.db", retention_hours=1)
    try:
        async with embedded_broker("127.0.0.1", port):
            cfg = bridge_config("127.0.0.1", port, prefix, tmp_path, mqtt_protocol="auto")
            async with (
                bridge_on(cfg, store, sink) as b,
                publisher("127.0.0.1", port, v5=False) as pub,
            ):
                assert {s.state.version for s in b.sessions.values()} == {"3.1.1"}
                msg = batch(gw, [reading("d1", "level", 1.0, t)])
                await pub.publish(Topics(prefix).telemetry(gw), msg.model_dump_json(), qos=1)
                await until(b, lambda s: s.ingested["telemetry"] == 1)
    finally:
        await sink.close()
