"""Hostile input and hostile neighbours, through real mosquitto, the bridge and the registry on
SQLite and PostgreSQL: a bad message is quarantined once and acknowledged, never retried forever;
the rest of its batch and every other gateway's messages are still written."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from pydantic import BaseModel
from sqlalchemy import text

from cloud_bridge import Bridge, SqliteSink
from device_registry import RegistryStore
from gridwatch.ground.contract import AlertState, PlatformAlert, Topics
from tests._central_helpers import (
    alert,
    batch,
    birth,
    bridge_config,
    now_ms,
    publisher,
    reading,
    running,
    until,
)
from tests.services import Mosquitto

YEAR_9999 = 253_402_300_799_999


def with_value(msg: BaseModel, path: tuple[str | int, ...], value: object) -> bytes:
    """``msg`` as JSON with one field set to what no gateway of ours would send."""
    doc = json.loads(msg.model_dump_json())
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(doc).encode()  # NaN goes out as the bare token, as a hostile sender would


@asynccontextmanager
async def central(
    mosquitto: Mosquitto, registry_url: str, prefix: str, tmp_path: Path, **kw: Any
) -> AsyncIterator[tuple[Bridge, RegistryStore]]:
    store = await RegistryStore.open(registry_url)
    sink = await SqliteSink.open(tmp_path / "telemetry.db")
    cfg = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path, **kw)
    try:
        async with running(Bridge(cfg, store, sink)) as b:
            yield b, store
    finally:
        await sink.close()
        await store.close()


async def platform_alerts(city: aiomqtt.Client, count: int) -> list[PlatformAlert]:
    got: list[PlatformAlert] = []
    async with asyncio.timeout(10):
        async for m in city.messages:
            got.append(PlatformAlert.model_validate_json(m.payload))
            if len(got) == count:
                return got
    return got


async def test_out_of_range_messages_are_quarantined_once_and_every_lane_keeps_moving(
    mosquitto: Mosquitto, registry_url: str, prefix: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    bad = [
        (topics.telemetry(gw), with_value(batch(gw, [reading("d1", "level", 1.0, t)]),
                                          ("readings", 0, "value"), 10**30)),
        (topics.telemetry(gw), with_value(batch(gw, [reading("d1", "level", 1.0, t)]),
                                          ("readings", 0, "value"), float("nan"))),
        (topics.telemetry(gw), with_value(batch(gw, [reading("d1", "level", 1.0, t)]),
                                          ("readings", 0, "value"), "x" * 800_000)),
        (topics.alert(gw), with_value(alert(gw, "fire-1", AlertState.RAISED, t), ("ts",), 2**63)),
    ]  # fmt: skip
    retained_birth = with_value(birth(gw, 1, ["d1"]), ("session",), 2**63)
    caplog.set_level(logging.WARNING)
    async with (
        central(mosquitto, registry_url, prefix, tmp_path) as (b, store),
        aiomqtt.Client(mosquitto.host, mosquitto.port) as city,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        await city.subscribe(topics.platform_alerts(), qos=1)
        await pub.publish(topics.status(gw), retained_birth, qos=1, retain=True)
        for topic, payload in bad:
            await pub.publish(topic, payload, qos=1)
        good_alert = alert(gw, "fire-2", AlertState.RAISED, t, seq=2)
        await pub.publish(topics.alert(gw), good_alert.model_dump_json(), qos=1)
        good = batch(gw, [reading("d2", "level", 2.5, t)])
        await pub.publish(topics.telemetry(gw), good.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["telemetry"] == 1 and s.ingested["alert"] == 1)
        # a marker after all of it: had anything been redelivered, it would be counted by now
        marker = batch(gw, [reading("d3", "x", 1, t)])
        await pub.publish(topics.telemetry(gw), marker.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["telemetry"] == 2)
        await pub.publish(topics.status(gw), b"", qos=1, retain=True)
        [published] = await platform_alerts(city, 1)
        assert b.committed.rejected == {"out_of_range": 5}
        kept = await store.quarantine()
        devices = {d.id: d for d in await store.devices(gateway=gw)}
        alerts = await store.alerts()
    assert sorted((q.topic, q.reason) for q in kept) == sorted(
        [(topic, "out_of_range") for topic, _ in bad] + [(topics.status(gw), "out_of_range")]
    )
    assert published.alert_id == f"{gw}:fire-2"  # the bad alert was never published
    assert [a.alert_id for a in alerts] == [f"{gw}:fire-2"]
    assert devices[f"{gw}:d2"].values["level"].value == 2.5
    assert devices[f"{gw}:d1"].values == {}  # named by the good alert; no bad value stored
    assert b.stats.write_failures == 0
    # one line each, without a traceback
    warned = [r for r in caplog.records if "quarantined" in r.getMessage()]
    assert len(warned) == 3  # once per topic and reason: telemetry, alert, status
    assert all(r.exc_info is None for r in caplog.records)


async def _refuse_point(store: RegistryStore, table: str, point: str) -> None:
    """Make the real database refuse rows naming ``point``: a stand-in for data the contract lets
    through and the database does not take (or a bug in the store)."""
    if store.dialect == "sqlite":
        ddl = [f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} WHEN NEW.point = "
               f"'{point}' BEGIN SELECT RAISE(ABORT, 'refused point {point}'); END"]  # fmt: skip
    else:
        ddl = [
            f"CREATE FUNCTION refuse_{table}() RETURNS trigger AS $$ BEGIN IF NEW.point = "
            f"'{point}' THEN RAISE EXCEPTION 'refused point {point}'; END IF; RETURN NEW; END "
            "$$ LANGUAGE plpgsql",
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW "
            f"EXECUTE FUNCTION refuse_{table}()",
        ]
    async with store.engine.begin() as conn:
        for statement in ddl:
            await conn.execute(text(statement))


async def test_a_message_the_registry_refuses_is_quarantined_once_and_the_rest_is_written(
    mosquitto: Mosquitto, registry_url: str, prefix: str, tmp_path: Path
) -> None:
    gw_a, gw_b, t = f"{prefix}-a", f"{prefix}-b", now_ms()
    topics = Topics(prefix)
    poison = batch(gw_a, [reading("d1", "poison", 1.0, t)])
    poison_alert = alert(gw_a, "p-1", AlertState.RAISED, t).model_copy(update={"point": "poison"})
    others = [
        (topics.telemetry(gw_a), batch(gw_a, [reading("d1", "level", 1.0, t)])),
        (topics.telemetry(gw_b), batch(gw_b, [reading("d1", "level", 2.0, t)])),
        (topics.alert(gw_b), alert(gw_b, "b-1", AlertState.RAISED, t)),
    ]
    # a long window: the poison and the others share one registry transaction
    async with (
        central(mosquitto, registry_url, prefix, tmp_path, registry_window_s=1.0) as (b, store),
        aiomqtt.Client(mosquitto.host, mosquitto.port) as city,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        await _refuse_point(store, "readings_latest", "poison")
        await _refuse_point(store, "alerts", "poison")
        await city.subscribe(topics.platform_alerts(), qos=1)
        await pub.publish(topics.telemetry(gw_a), poison.model_dump_json(), qos=1)
        await pub.publish(topics.alert(gw_a), poison_alert.model_dump_json(), qos=1)
        for topic, msg in others:
            await pub.publish(topic, msg.model_dump_json(), qos=1)
        await until(b, lambda s: s.rejected["store_refused"] == 2 and s.ingested["telemetry"] == 2)
        marker = batch(gw_b, [reading("d2", "level", 3.0, t)])
        await pub.publish(topics.telemetry(gw_b), marker.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["telemetry"] == 3)
        published = await platform_alerts(city, 2)
        kept = await store.quarantine()
        values = {d.id: {p: v.value for p, v in d.values.items()} for d in await store.devices()}
        alerts = [a.alert_id for a in await store.alerts()]
        stats = b.committed
    assert sorted((q.topic, q.reason) for q in kept) == [
        (topics.alert(gw_a), "store_refused"), (topics.telemetry(gw_a), "store_refused")
    ]  # fmt: skip
    assert all("refused point poison" in q.detail for q in kept)
    assert values == {f"{gw_a}:d1": {"level": 1.0}, f"{gw_b}:d1": {"level": 2.0},
                      f"{gw_b}:d2": {"level": 3.0}}  # fmt: skip
    assert alerts == [f"{gw_b}:b-1"]
    # published once, when it came (before the registry refused it); never again
    assert sorted(a.alert_id for a in published) == sorted([f"{gw_a}:p-1", f"{gw_b}:b-1"])
    assert (stats.rejected, stats.write_failures) == ({"store_refused": 2}, 0)
    assert stats.ingested == {"telemetry": 3, "alert": 1}


async def test_a_gateway_cannot_touch_another_gateways_alert(
    mosquitto: Mosquitto, registry_url: str, prefix: str, tmp_path: Path
) -> None:
    gw_a, gw_b, t = f"{prefix}-a", f"{prefix}-b", now_ms()
    topics = Topics(prefix)
    fire = alert(gw_a, f"{gw_a}:d1:smoke:{t}", AlertState.RAISED, t, seq=1)
    # gw-b clears gw-a's alert by its id, and pins it with a far-future update
    forged = [
        fire.model_copy(update={"gateway": gw_b, "id": f"f{i}", "state": state, "ts": ts})
        for i, (state, ts) in enumerate([(AlertState.CLEARED, t + 1), (AlertState.UPDATED, YEAR_9999)])
    ]  # fmt: skip
    update = fire.model_copy(update={"id": "real", "seq": 2, "state": AlertState.UPDATED,
                                     "ts": t + 2, "value": 9.9})  # fmt: skip
    async with (
        central(mosquitto, registry_url, prefix, tmp_path) as (b, store),
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        await pub.publish(topics.alert(gw_a), fire.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["alert"] == 1)
        for ev in forged:
            await pub.publish(topics.alert(gw_b), ev.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["alert"] == 2 and s.refused["clock"] == 1)
        await pub.publish(topics.alert(gw_a), update.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["alert"] == 3)
        active = {a.alert_id: a for a in await store.alerts(active_only=False)}
        kept = await store.quarantine()
    real = active[fire.alert_id]
    assert (real.gateway, real.state, real.value) == (gw_a, "updated", 9.9)
    assert active[f"{gw_b}:{fire.alert_id}"].state == "cleared"  # gw-b's own, apart
    assert [(q.topic, q.reason) for q in kept] == [(topics.alert(gw_b), "clock")]


async def test_a_reading_dated_year_9999_does_not_pin_the_device(
    mosquitto: Mosquitto, registry_url: str, prefix: str, tmp_path: Path
) -> None:
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    async with (
        central(mosquitto, registry_url, prefix, tmp_path) as (b, store),
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        pinned = batch(gw, [reading("d1", "level", 9.0, YEAR_9999), reading("d1", "level", 1.0, t)])
        await pub.publish(topics.telemetry(gw), pinned.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["telemetry"] == 1)
        later = batch(gw, [reading("d1", "level", 2.0, t + 1000)])
        await pub.publish(topics.telemetry(gw), later.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["telemetry"] == 2)
        dev = await store.device(f"{gw}:d1")
    assert (dev.last_seen, dev.values["level"].value, dev.values["level"].ts) == (
        t + 1000, 2.0, t + 1000
    )  # fmt: skip
    assert (b.committed.refused, b.committed.points_written) == ({"clock": 1}, 2)


async def test_a_gateway_adds_at_most_its_limit_of_devices(
    mosquitto: Mosquitto, registry_url: str, prefix: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    caplog.set_level(logging.WARNING)
    async with (
        central(mosquitto, registry_url, prefix, tmp_path, max_devices_per_gateway=3) as (b, store),
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        first = batch(gw, [reading(f"d{i}", "level", float(i), t) for i in range(5)])
        await pub.publish(topics.telemetry(gw), first.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["telemetry"] == 1)
        more = batch(gw, [reading(f"d{i}", "level", 10.0 + i, t + 1) for i in range(3, 8)]
                     + [reading("d0", "level", 9.0, t + 1)])  # fmt: skip
        await pub.publish(topics.telemetry(gw), more.model_dump_json(), qos=1)
        await pub.publish(topics.status(gw), birth(gw, 1, ["d0", "x1", "x2"]).model_dump_json(), qos=1)  # fmt: skip
        await until(b, lambda s: s.ingested["telemetry"] == 2 and s.ingested["birth"] == 1)
        values = {d.device: d.values["level"].value for d in await store.devices(gateway=gw)
                  if "level" in d.values}  # fmt: skip
        names = sorted(d.device for d in await store.devices(gateway=gw))
        refused = b.committed.refused
    assert names == ["d0", "d1", "d2"]
    assert values == {"d0": 9.0, "d1": 1.0, "d2": 2.0}  # the ones it has keep updating
    assert refused == {"device_limit": 2 + 5 + 2}
    warned = [r for r in caplog.records if "max_devices_per_gateway" in r.getMessage()]
    assert len(warned) == 1 and gw in warned[0].getMessage()  # once per gateway


async def _register(store: RegistryStore, gw: str, device: str, district: str, t: int) -> None:
    """What an installer's registration leaves in the registry: the device, at its site."""
    async with store.transaction() as s:
        await s.execute(text("INSERT INTO districts (id, name) VALUES (:d, '')"), {"d": district})
        await s.execute(
            text("INSERT INTO sites (district_id, street, grid) VALUES (:d, 'Dock Rd', 'Z9')"),
            {"d": district},
        )
        site = (await s.execute(text("SELECT id FROM sites WHERE district_id = :d"), {"d": district})).scalar_one()  # fmt: skip
        await s.execute(
            text("INSERT INTO gateways (id, online, session, software, config_version, "
                 "first_seen, last_seen, registered_at, name, config_desired, config_acked) "
                 "VALUES (:g, false, 0, '', 0, :t, :t, :t, '', 0, 0)"),
            {"g": gw, "t": t},
        )  # fmt: skip
        await s.execute(
            text("INSERT INTO devices (id, gateway_id, name, site_id, status, first_seen, "
                 "registered_at, address, firmware) VALUES (:id, :g, :n, :site, 'online', :t, "
                 ":t, '', '')"),
            {"id": f"{gw}:{device}", "g": gw, "n": device, "site": site, "t": t},
        )  # fmt: skip


async def test_a_gateway_speaks_only_for_its_own_registered_devices_and_places(
    mosquitto: Mosquitto, registry_url: str, prefix: str, tmp_path: Path
) -> None:
    gw_a, gw_b, t = f"{prefix}-a", f"{prefix}-b", now_ms()
    topics = Topics(prefix)
    smoke = alert(gw_a, "s1", AlertState.RAISED, t, district="elsewhere")
    smoke = smoke.model_copy(update={"device": "sd-001"})
    async with (
        central(mosquitto, registry_url, prefix, tmp_path) as (b, store),
        aiomqtt.Client(mosquitto.host, mosquitto.port) as city,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        await _register(store, gw_a, "sd-001", "harbour", t)
        await city.subscribe(topics.platform_alerts(), qos=1)
        forged = alert(gw_b, "s1", AlertState.RAISED, t).model_copy(update={"device": "sd-001"})
        await pub.publish(topics.alert(gw_b), forged.model_dump_json(), qos=1)
        readings = batch(gw_b, [reading("sd-001", "smoke", 1, t), reading("own", "smoke", 0, t)])
        await pub.publish(topics.telemetry(gw_b), readings.model_dump_json(), qos=1)
        await pub.publish(topics.alert(gw_a), smoke.model_dump_json(), qos=1)
        await until(b, lambda s: s.ingested["alert"] == 1 and s.ingested["telemetry"] == 1)
        [published] = await platform_alerts(city, 1)
        b_devices = sorted(d.device for d in await store.devices(gateway=gw_b))
        [stored] = await store.alerts()
        kept = await store.quarantine()
        refused = b.committed.refused
    # gw-a's alert, placed where the installer registered its device, not where it said
    assert (published.alert_id, published.location.district) == (f"{gw_a}:s1", "harbour")
    assert (stored.alert_id, stored.district) == (f"{gw_a}:s1", "harbour")
    assert b_devices == ["own"]
    assert [(q.topic, q.reason) for q in kept] == [(topics.alert(gw_b), "foreign_device")]
    assert refused == {"foreign_device": 2}  # the alert and the reading


async def test_a_refused_message_is_not_delivered_again_after_a_restart(
    mosquitto: Mosquitto, registry_url: str, prefix: str, tmp_path: Path
) -> None:
    """Acknowledged means gone: a new bridge on the same persistent session gets nothing back."""
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    async with publisher(mosquitto.host, mosquitto.port) as pub:
        async with central(mosquitto, registry_url, prefix, tmp_path) as (b, store):
            await _refuse_point(store, "readings_latest", "poison")
            poison = batch(gw, [reading("d1", "poison", 1.0, t)])
            await pub.publish(topics.telemetry(gw), poison.model_dump_json(), qos=1)
            await until(b, lambda s: s.rejected["store_refused"] == 1)
        async with central(mosquitto, registry_url, prefix, tmp_path) as (again, store):
            marker = batch(gw, [reading("d1", "level", 2.0, t)])
            await pub.publish(topics.telemetry(gw), marker.model_dump_json(), qos=1)
            await until(again, lambda s: s.ingested["telemetry"] == 1)
            kept = await store.quarantine()
            stats = again.committed
    assert [q.reason for q in kept] == ["store_refused"]
    assert (stats.received, stats.rejected, stats.duplicates) == (1, {}, 0)


async def _refuse_all(store: RegistryStore, table: str, refuse: bool = True) -> None:
    """Make the real database refuse every new row of ``table`` (or stop refusing)."""
    name = f"refuse_all_{table}"
    if store.dialect == "sqlite":
        ddl = [f"CREATE TRIGGER {name} BEFORE INSERT ON {table} BEGIN "
               f"SELECT RAISE(ABORT, 'refused every {table} row'); END"]  # fmt: skip
        undo = [f"DROP TRIGGER {name}"]
    else:
        ddl = [
            f"CREATE FUNCTION {name}() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
            f"'refused every {table} row'; END $$ LANGUAGE plpgsql",
            f"CREATE TRIGGER {name} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION "
            f"{name}()",
        ]
        undo = [f"DROP TRIGGER {name} ON {table}"]
    async with store.engine.begin() as conn:
        for statement in ddl if refuse else undo:
            await conn.execute(text(statement))


async def test_a_registry_that_refuses_even_the_quarantine_is_an_outage_not_poison(
    mosquitto: Mosquitto, registry_url: str, prefix: str, tmp_path: Path
) -> None:
    """Nothing is acknowledged, nothing is lost: once the registry takes the quarantine again,
    the message is quarantined (once) and acknowledged."""
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    async with (
        central(mosquitto, registry_url, prefix, tmp_path) as (b, store),
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        await _refuse_point(store, "readings_latest", "poison")
        await _refuse_all(store, "quarantine")
        poison = batch(gw, [reading("d1", "poison", 1.0, t)])
        await pub.publish(topics.telemetry(gw), poison.model_dump_json(), qos=1)
        await until(b, lambda s: s.write_failures >= 2, live=True)
        assert (await store.quarantine(), b.committed.rejected) == ([], {})
        await _refuse_all(store, "quarantine", refuse=False)
        await until(b, lambda s: s.rejected["store_refused"] == 1)
        kept = await store.quarantine()
    assert [(q.topic, q.reason) for q in kept] == [(topics.telemetry(gw), "store_refused")]
