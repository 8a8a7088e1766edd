"""RegistryStore on SQLite and on PostgreSQL: the same code, the same answers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from device_registry import (
    Ambiguous,
    Changes,
    NotFound,
    QuarantineEntry,
    RegistryStore,
    Seen,
)
from gridwatch.ground.contract import AlertState, DeviceHealth, GatewayHealth, Quality, new_id
from tests._central_helpers import alert, birth, death, reading


@pytest.fixture
async def store(registry_url: str) -> AsyncIterator[RegistryStore]:
    s = await RegistryStore.open(registry_url)
    yield s
    await s.close()


def telemetry(now: int, *values: tuple[str, str, str, float | None, int, Quality]) -> Changes:
    ch = Changes(now=now)
    for gw, dev, point, value, ts, q in values:
        ch.latest[(gw, dev, point)] = reading(dev, point, value, ts, q)
        alive = ts if q is not Quality.COMM_ERROR else None
        ch.device_seen[(gw, dev)] = alive
        ch.seen_ids[new_id()] = Seen(gw)
    return ch


async def test_auto_registration_and_last_values(store: RegistryStore) -> None:
    good = Quality.GOOD
    await store.apply(telemetry(1000, ("g1", "d1", "level", 1.0, 900, good)))
    await store.apply(telemetry(2000, ("g1", "d1", "level", 2.0, 1900, good)))
    # a replayed older reading must not hide the newer one
    await store.apply(telemetry(3000, ("g1", "d1", "level", 0.5, 100, good)))
    await store.apply(telemetry(3000, ("g1", "d1", "flow", None, 2500, Quality.COMM_ERROR)))
    [dev] = await store.devices()
    assert (dev.id, dev.gateway, dev.device, dev.status) == ("g1:d1", "g1", "d1", "online")
    assert (dev.first_seen, dev.last_seen) == (1000, 1900)
    assert dev.values["level"].value == 2.0 and dev.values["level"].ts == 1900
    assert dev.values["flow"].quality == "comm_error" and dev.values["flow"].value is None
    [gw] = await store.gateways()
    assert (gw.id, gw.devices, gw.first_seen, gw.last_seen) == ("g1", 1, 1000, 3000)


async def test_birth_death_session_rules(store: RegistryStore) -> None:
    await store.apply(Changes(now=10, status=[birth("g1", 3, ["a", "b"])]))
    assert {d.device: d.status for d in await store.devices()} == {"a": "online", "b": "online"}
    await store.apply(Changes(now=20, status=[death("g1", 2)]))  # an older session's will
    assert {d.status for d in await store.devices()} == {"online"}
    await store.apply(Changes(now=30, status=[death("g1", 3)]))
    assert {d.status for d in await store.devices()} == {"stale"}
    [gw] = await store.gateways()
    assert (gw.online, gw.session, gw.died_at) == (False, 3, 30)


async def test_alert_lifecycle_and_district_filter(store: RegistryStore) -> None:
    def changes(now: int, *events: object) -> Changes:
        ch = Changes(now=now, alerts=list(events))  # type: ignore[arg-type]
        ch.device_seen[("g1", "d1")] = None
        return ch

    await store.apply(changes(1, alert("g1", "a1", AlertState.RAISED, 100)))
    await store.apply(changes(2, alert("g1", "a1", AlertState.UPDATED, 200, value=3.9)))
    # an out-of-order (older) transition is recorded but does not roll the state back
    await store.apply(changes(3, alert("g1", "a1", AlertState.RAISED, 150)))
    [a] = await store.alerts()
    assert (a.state, a.value, a.transitions, a.raised_at, a.updated_at) == (
        "updated",
        3.9,
        3,
        100,
        200,
    )
    assert (a.district, a.grid, a.device) == ("north", "G7", "d1")
    await store.apply(changes(4, alert("g1", "a1", AlertState.CLEARED, 300)))
    assert await store.alerts() == []
    [done] = await store.alerts(active_only=False)
    assert (done.state, done.cleared_at) == ("cleared", 300)
    # the alert's location sites the device, so it can be found by district
    assert [d.id for d in await store.devices(district="north")] == ["g1:d1"]
    assert await store.devices(district="south") == []
    assert (await store.device("g1:d1")).district == "north"


async def test_device_lookup(store: RegistryStore) -> None:
    ch = Changes(now=1, device_seen={("g1", "d1"): 5, ("g2", "d1"): 6, ("g2", "d2"): None})
    await store.apply(ch)
    assert (await store.device("g2:d1")).last_seen == 6
    assert (await store.device("d2")).id == "g2:d2"
    with pytest.raises(Ambiguous) as amb:
        await store.device("d1")
    assert amb.value.candidates == ["g1:d1", "g2:d1"]
    with pytest.raises(NotFound):
        await store.device("g9:d1")
    assert [d.id for d in await store.devices(gateway="g2")] == ["g2:d1", "g2:d2"]


async def test_health_is_stored_per_gateway_and_device(store: RegistryStore) -> None:
    report = GatewayHealth(
        id=new_id(), gateway="g1", seq=1, session=1, ts=500, cpu_percent=12.5, outbox_depth=7,
        devices=[DeviceHealth(device="d1", online=False, consecutive_failures=4)],
    )  # fmt: skip
    ch = Changes(now=600, health=[report], device_seen={("g1", "d1"): None})
    await store.apply(ch)
    [gw] = await store.gateways()
    assert gw.health is not None and (gw.health["cpu_percent"], gw.health["outbox_depth"]) == (
        12.5,
        7,
    )
    dev = await store.device("g1:d1")
    assert dev.health is not None and dev.health["consecutive_failures"] == 4


async def test_seen_ids_and_quarantine_are_bounded(store: RegistryStore) -> None:
    old = Changes(now=1_000, seen_ids={"old": Seen("g1")})
    new = Changes(now=9_000, seen_ids={"new": Seen("g1")})
    new.quarantine = [
        QuarantineEntry(f"t/{i}", "bad_json", "x", b"\xff" * 3, 9_000) for i in range(5)
    ]
    await store.apply(old)
    await store.apply(new)
    assert await store.seen(["old", "new", "other"]) == {"old", "new"}
    await store.prune(now=10_000, seen_max_age_ms=5_000, quarantine_keep=2)
    assert await store.seen(["old", "new"]) == {"new"}
    kept = await store.quarantine()
    assert [q.topic for q in kept] == ["t/4", "t/3"]
    assert kept[0].payload == "\ufffd" * 3


async def test_telemetry_after_a_death_leaves_devices_stale(store: RegistryStore) -> None:
    """Telemetry and status come on separate sessions: a death may be applied before telemetry
    read earlier. Also exercises the upsert's conflict path with several devices per gateway."""
    good = Quality.GOOD
    both = (("g1", "d1", "level", 1.0, 100, good), ("g1", "d2", "level", 2.0, 100, good))
    await store.apply(telemetry(1000, *both))
    await store.apply(telemetry(2000, *both))  # every row conflicts now
    await store.apply(Changes(now=2500, status=[death("g1", 0)]))
    await store.apply(
        telemetry(3000, ("g1", "d1", "level", 3.0, 200, good), ("g1", "d3", "x", 1.0, 200, good))
    )
    assert {d.device: d.status for d in await store.devices()} == {
        "d1": "stale", "d2": "stale", "d3": "stale"
    }  # fmt: skip
    assert (await store.device("g1:d1")).last_seen == 200
    await store.apply(Changes(now=4000, status=[birth("g1", 1, [])]))
    assert {d.status for d in await store.devices()} == {"online"}


def numbered(now: int, gw: str, stream: str, session: int, *seqs: int) -> Changes:
    return Changes(now=now, seen_ids={new_id(): Seen(gw, stream, session, q) for q in seqs})


async def test_the_sequence_audit_finds_each_gap_once_however_many_bridges_ask(
    store: RegistryStore,
) -> None:
    """Two bridges of a shared subscription saw alternate messages; together they miss 4 and
    7..8, which one of them reports; numbers not yet settled are left for the next audit."""
    await store.apply(numbered(1_000, "g1", "telemetry", 1, 1, 3, 5, 9))  # bridge A's share
    await store.apply(numbered(1_000, "g1", "telemetry", 1, 2, 6, 10))  # bridge B's share
    await store.apply(numbered(1_000, "g1", "alert", 1, 1, 2))  # a stream with no hole
    await store.apply(numbered(5_000, "g1", "telemetry", 1, 12))  # not settled yet
    other = await RegistryStore.open(store.engine.url.render_as_string(hide_password=False))
    results = await asyncio.gather(*(s.audit_sequences(0, 2_000) for s in (store, other)))
    found = [g for r in results for g in r]
    assert [(g.gateway, g.stream, g.after, g.through, g.holes) for g in found] == [
        ("g1", "telemetry", 0, 10, ((4, 4), (7, 8)))
    ]
    # 11 never comes; 12 has settled by the next audit
    assert [(g.after, g.through, g.missing) for g in await store.audit_sequences(0, 6_000)] == [
        (10, 12, 1)
    ]
    assert await other.audit_sequences(0, 6_000) == []  # nothing new: nothing reported twice
    await other.close()
