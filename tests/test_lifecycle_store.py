"""Alert operations on a real registry store (SQLite and PostgreSQL): lifecycle persisted with
who and when, incidents grouped, overdue alerts escalated once, every change in the feed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import update

from device_registry import Changes, RegistryStore, StoreUnavailable
from device_registry.alerts.lifecycle import SILENT_MS, Action, NoteRequired, Refused, StillActive
from device_registry.alerts.store import AlertFilter, OpsStore
from device_registry.db.tables import Alert, Device
from device_registry.errors import NotFound
from device_registry.http.auth import Principal, Role
from gridwatch.ground.contract import AlertEvent, AlertState, Birth, Location, Severity, new_id

T0 = 1_700_000_000_000
MIN = 60_000


@pytest.fixture
async def ops(registry_url: str) -> AsyncIterator[OpsStore]:
    store = await RegistryStore.open(registry_url)
    yield OpsStore(store)
    await store.close()


def smoke(alert_id: str, device: str, at: int, state: AlertState = AlertState.RAISED,
          grid: str = "FT-0042") -> AlertEvent:  # fmt: skip
    return AlertEvent(
        id=new_id(), gateway="gw1", seq=1, session=1, alert_id=alert_id, state=state,
        rule="smoke", category="2201", severity=Severity.CRITICAL, device=device,
        point="obscuration", location=Location(district="futian", grid=grid), value=5.0,
        raised_at=at, ts=at,
    )  # fmt: skip


async def ingest(ops: OpsStore, *events: AlertEvent, now: int = T0) -> None:
    await ops.store.apply(Changes(now=now, alerts=list(events)))


async def test_lifecycle_is_persisted_with_who_and_when(ops: OpsStore) -> None:
    await ingest(ops, smoke("a1", "sd-1", T0))
    [a] = await ops.alerts(AlertFilter(), now=T0 + MIN)
    assert (a.stage, a.time_limit_min, a.due_at) == ("open", 15, T0 + 15 * MIN)
    assert a.time_left_ms == 14 * MIN and not a.overdue

    await ops.act("a1", Action.ACK, "ops-anna", "crew on the way", T0 + 2 * MIN)
    with pytest.raises(Refused):
        await ops.act("a1", Action.ACK, "ops-bob", "", T0 + 3 * MIN)
    with pytest.raises(StillActive, match="the sensor still reports obscuration 5"):
        await ops.act("a1", Action.RESOLVE, "ops-bob", "", T0 + 8 * MIN)
    await ingest(ops, smoke("a1", "sd-1", T0 + 9 * MIN, AlertState.CLEARED), now=T0 + 9 * MIN)
    view = await ops.act("a1", Action.RESOLVE, "ops-bob", "false alarm: kitchen", T0 + 10 * MIN)
    assert (view.resolved_by, view.resolved_at) == ("ops-bob", T0 + 10 * MIN)
    assert view.notes == {"ack": "crew on the way", "resolve": "false alarm: kitchen"}
    assert (view.category_name, view.responsible_unit) == (
        "烟感火警", "消防救援机构",
    )  # fmt: skip
    view = await ops.act("a1", Action.CLOSE, "ops-anna", "", T0 + 11 * MIN)
    assert view.stage == "closed" and view.acked_by == "ops-anna" and view.resolved_by == "ops-bob"
    assert view.cleared_at == T0 + 9 * MIN  # the device's clear is kept beside the people's steps

    _, steps = await ops.alert("a1", T0 + 12 * MIN)
    assert [(s.action, s.after, s.actor, s.at) for s in steps] == [
        ("ack", "acknowledged", "ops-anna", T0 + 2 * MIN),
        ("device_clear", "cleared", "device", T0 + 9 * MIN),
        ("resolve", "resolved", "ops-bob", T0 + 10 * MIN),
        ("close", "closed", "ops-anna", T0 + 11 * MIN),
    ]
    assert await ops.alerts(AlertFilter(), now=T0) == []  # closed alerts are not listed


async def test_device_clear_moves_an_open_alert_to_cleared(ops: OpsStore) -> None:
    await ingest(ops, smoke("a1", "sd-1", T0))
    await ingest(ops, smoke("a1", "sd-1", T0 + MIN, AlertState.CLEARED), now=T0 + MIN)
    [a] = await ops.alerts(AlertFilter(), now=T0 + 2 * MIN)
    assert a.stage == "cleared" and a.time_left_ms is None


async def test_two_detectors_in_one_cell_are_one_incident(ops: OpsStore) -> None:
    await ingest(ops, smoke("a1", "sd-1", T0), smoke("a2", "sd-2", T0 + 20_000))
    await ingest(ops, smoke("a3", "sd-3", T0 + 30_000, grid="FT-0099"))
    await ingest(ops, smoke("a4", "sd-4", T0 + 5 * MIN))
    views = {a.alert_id: a for a in await ops.alerts(AlertFilter(), now=T0)}
    assert views["a1"].incident_id == views["a2"].incident_id
    assert len({v.incident_id for v in views.values()}) == 3
    opened = [e.payload for e in await ops.feed(0) if e.kind == "lifecycle"]
    assert [(p["alert_id"], p["incident_new"]) for p in opened] == [
        ("a1", True),
        ("a2", False),
        ("a3", True),
        ("a4", True),
    ]


async def test_overdue_alert_is_escalated_once(ops: OpsStore) -> None:
    await ingest(ops, smoke("a1", "sd-1", T0), smoke("a2", "sd-2", T0, grid="FT-0100"))
    await ingest(ops, smoke("a2", "sd-2", T0 + MIN // 2, AlertState.CLEARED, grid="FT-0100"))
    await ops.act("a2", Action.RESOLVE, "ops", "", T0 + MIN)
    assert await ops.escalate(T0 + 15 * MIN) == []
    assert await ops.escalate(T0 + 15 * MIN + 1) == ["a1"]
    assert await ops.escalate(T0 + 30 * MIN) == []
    [a] = await ops.alerts(AlertFilter(stages=frozenset({"open"})), now=T0 + 16 * MIN)
    assert a.overdue and a.escalated_at == T0 + 15 * MIN + 1
    [esc] = [e for e in await ops.feed(0) if e.kind == "escalation"]
    assert esc.payload["overdue_ms"] == 1 and esc.payload["unit"] == "消防救援机构"
    assert (esc.district, esc.category, esc.severity) == ("futian", "2201", "critical")


async def test_feed_is_pruned_except_what_a_dead_letter_needs(ops: OpsStore) -> None:
    await ingest(ops, smoke("a1", "sd-1", T0), now=T0)
    await ingest(ops, smoke("a2", "sd-2", T0, grid="X"), now=T0 + 10 * MIN)
    _, second, third, _ = await ops.feed(0)
    await ops.dead_letter(1, second.seq, 6, "HTTP 500", T0 + MIN)
    assert await ops.prune_feed(T0 + MIN) == 1  # the first; the second waits for its replay
    assert [e.seq for e in await ops.feed(0)][:2] == [second.seq, third.seq]


async def test_feed_has_every_change_in_order(ops: OpsStore) -> None:
    await ingest(ops, smoke("a1", "sd-1", T0))
    await ops.act("a1", Action.ACK, "ops", "", T0 + 1)
    feed = await ops.feed(0)
    assert [(e.kind, e.payload.get("action") or e.payload.get("state")) for e in feed] == [
        ("alert", "raised"),
        ("lifecycle", "open"),
        ("lifecycle", "ack"),
    ]
    assert [e.seq for e in feed] == sorted(e.seq for e in feed)
    assert await ops.feed(feed[-1].seq) == []


async def test_two_registry_processes_escalate_an_alert_once(ops: OpsStore) -> None:
    """Registry processes scale out on one database: both escalation clocks tick, one wins."""
    await ingest(ops, smoke("a1", "sd-1", T0))
    other_store = await RegistryStore.open(
        ops.store.engine.url.render_as_string(hide_password=False)
    )
    other = OpsStore(other_store)
    try:
        results = await asyncio.gather(
            *(o.escalate(T0 + 20 * MIN) for o in (ops, other)), return_exceptions=True
        )
        # SQLite may refuse the loser's stale write outright (it retries on its next tick)
        done = [r for r in results if not isinstance(r, BaseException)]
        assert sorted(a for r in done for a in r) == ["a1"]
        assert all(isinstance(r, StoreUnavailable) for r in results if isinstance(r, BaseException))
        assert await other.escalate(T0 + 21 * MIN) == []
        assert [e.kind for e in await ops.feed(0)].count("escalation") == 1
    finally:
        await other_store.close()


async def test_an_incident_is_acknowledged_and_resolved_as_one(ops: OpsStore) -> None:
    """Two detectors in one cell: the operator acts on the incident, not alert by alert."""
    await ingest(ops, smoke("a1", "sd-1", T0), smoke("a2", "sd-2", T0 + 20_000))
    await ingest(ops, smoke("x9", "sd-9", T0, grid="FT-0099"))  # another incident
    views = {a.alert_id: a for a in await ops.alerts(AlertFilter(), now=T0)}
    incident = views["a1"].incident_id
    await ops.act("a1", Action.ACK, "ops-1", "seen on camera", T0 + MIN)

    acked = await ops.act_on_incident(incident, Action.ACK, "ops-2", "crew sent", T0 + 2 * MIN)
    assert [a.alert_id for a in acked.applied] == ["a2"]
    assert [(s.alert_id, s.stage) for s in acked.skipped] == [("a1", "acknowledged")]
    assert acked.applied[0].acked_by == "ops-2"

    # one detector still sees smoke: that alert stays, with the reason in words
    await ingest(ops, smoke("a1", "sd-1", T0 + 20 * MIN, AlertState.CLEARED))
    resolved = await ops.act_on_incident(incident, Action.RESOLVE, "ops-2", "", T0 + 30 * MIN)
    assert [a.alert_id for a in resolved.applied] == ["a1"]
    assert [(s.alert_id, s.stage) for s in resolved.skipped] == [("a2", "acknowledged")]
    assert "cannot be resolved yet: the sensor still reports" in resolved.skipped[0].reason
    await ingest(ops, smoke("a2", "sd-2", T0 + 31 * MIN, AlertState.CLEARED))
    resolved = await ops.act_on_incident(incident, Action.RESOLVE, "ops-2", "", T0 + 32 * MIN)
    assert [a.alert_id for a in resolved.applied] == ["a2"]
    assert [(s.alert_id, s.stage) for s in resolved.skipped] == [("a1", "resolved")]
    stages = {
        a.alert_id: a.stage
        for a in await ops.alerts(
            AlertFilter(stages=frozenset({"open", "acknowledged", "resolved"})), now=T0 + 31 * MIN
        )
    }
    assert stages == {"a1": "resolved", "a2": "resolved", "x9": "open"}  # fmt: skip
    actions = [(e.payload["alert_id"], e.payload.get("action")) for e in await ops.feed(0)
               if e.kind == "lifecycle" and e.payload.get("action") != "open"]  # fmt: skip
    assert actions == [("a1", "ack"), ("a2", "ack"), ("a1", "device_clear"), ("a1", "resolve"),
                       ("a2", "device_clear"), ("a2", "resolve")]  # fmt: skip
    with pytest.raises(NotFound):
        await ops.act_on_incident("no-such-incident", Action.ACK, "ops", "", T0)


async def test_an_alert_stored_before_the_contract_had_ranges_still_moves(ops: OpsStore) -> None:
    """A row written before the contract bounded its strings (an 800 KB street) must not stop
    the ingest of its clear: the platform message is built from what is stored."""
    await ingest(ops, smoke("old-1", "sd-1", T0))
    legacy = {"district": "futian", "street": "x" * 800_000, "grid": "FT-0042"}
    async with ops.store.transaction() as s:
        await s.execute(update(Alert).where(Alert.alert_id == "old-1").values(location=legacy))
    await ingest(ops, smoke("old-1", "sd-1", T0 + MIN, AlertState.CLEARED), now=T0 + MIN)
    [a] = await ops.alerts(AlertFilter(), now=T0 + 2 * MIN)
    assert (a.alert_id, a.stage) == ("old-1", "cleared")


async def test_two_operators_closing_at_once_close_each_alert_once(ops: OpsStore) -> None:
    """Two operators (through two registry processes) close the same cleared alerts at once:
    each alert is closed once, by one of them, with one lifecycle message; the other is told
    it was closed already."""
    ids = [f"c{n}" for n in range(5)]
    await ingest(ops, *(smoke(i, f"sd-{i}", T0, grid=f"G-{i}") for i in ids))
    await ingest(ops, *(smoke(i, f"sd-{i}", T0 + MIN, AlertState.CLEARED, grid=f"G-{i}")
                        for i in ids))  # fmt: skip
    other_store = await RegistryStore.open(
        ops.store.engine.url.render_as_string(hide_password=False)
    )
    other = OpsStore(other_store)
    anna, bob = Principal("anna", Role.OPERATOR), Principal("bob", Role.OPERATOR)
    try:
        results = await asyncio.gather(
            ops.close_many(ids, anna, "", T0 + 2 * MIN),
            other.close_many(ids, bob, "", T0 + 2 * MIN),
            return_exceptions=True,
        )
    finally:
        await other_store.close()
    # SQLite may refuse the loser's stale transaction outright (its operator tries again)
    done = [r for r in results if not isinstance(r, BaseException)]
    assert all(isinstance(r, StoreUnavailable) for r in results if isinstance(r, BaseException))
    assert sorted(i for r in done for i in r.closed) == ids
    for r in done:
        assert all(sk.reason == "cannot close an alert that is closed" for sk in r.skipped)
    closes = [e.payload["alert_id"] for e in await ops.feed(0)
              if e.kind == "lifecycle" and e.payload.get("action") == "close"]  # fmt: skip
    assert sorted(closes) == ids


async def test_an_alert_whose_sensor_is_gone_can_be_ended(ops: OpsStore) -> None:
    """A device retired, or silent for a day: its alert leaves the lists without an override,
    recorded with what the sensor last said and why it was not waited for."""
    birth = Birth(gateway="gw1", session=1, ts=T0, devices=["sd-1", "sd-2"])
    await ops.store.apply(Changes(now=T0, status=[birth]))
    await ingest(ops, smoke("a1", "sd-1", T0), smoke("a2", "sd-2", T0, grid="FT-0100"))
    with pytest.raises(StillActive):  # a day exactly: not yet
        await ops.act("a1", Action.RESOLVE, "ops", "", T0 + SILENT_MS)
    view = await ops.act("a1", Action.RESOLVE, "ops", "", T0 + SILENT_MS + 1)
    assert view.stage == "resolved"
    async with ops.store.transaction() as s:
        await s.execute(update(Device).where(Device.id == "gw1:sd-2").values(retired_at=T0 + MIN))
    view = await ops.act("a2", Action.RESOLVE, "ops", "removed", T0 + 2 * MIN)
    assert view.stage == "resolved"
    _, steps = await ops.alert("a2", T0 + 3 * MIN)
    assert [(st.action, st.override, st.sensor) for st in steps] == [
        ("resolve", False, "obscuration 5; its device is retired"),
    ]
    _, steps = await ops.alert("a1", T0 + 3 * MIN)
    assert [(st.override, st.sensor) for st in steps] == [
        (False, "obscuration 5; no reading for 24 h"),
    ]
    # and they close in bulk like any other
    done = await ops.close_many(["a1", "a2"], Principal("anna", Role.OPERATOR), "",
                                T0 + SILENT_MS + MIN)  # fmt: skip
    assert done.closed == ["a1", "a2"]


async def test_an_override_needs_a_reason_and_is_recorded(ops: OpsStore) -> None:
    await ingest(ops, smoke("a1", "sd-1", T0))
    with pytest.raises(NoteRequired):
        await ops.act("a1", Action.RESOLVE, "ops", "broken", T0 + MIN, override=True)
    why = "detector under water since 03:10"
    view = await ops.act("a1", Action.RESOLVE, "ops-anna", why, T0 + 2 * MIN, override=True)
    assert (view.stage, view.resolved_by, view.notes) == ("resolved", "ops-anna", {"resolve": why})
    _, [st] = await ops.alert("a1", T0 + 3 * MIN)
    assert (st.actor, st.note, st.override, st.sensor) == (
        "ops-anna", why, True, "obscuration 5; still reported",
    )  # fmt: skip
    [msg] = [e.payload for e in await ops.feed(0) if e.payload.get("action") == "resolve"]
    assert (msg["override"], msg["note"], msg["sensor"]) == (
        True, why, "obscuration 5; still reported",
    )  # fmt: skip
    # the device clears it later: an ordinary close, not an override
    await ingest(ops, smoke("a1", "sd-1", T0 + 4 * MIN, AlertState.CLEARED), now=T0 + 4 * MIN)
    view = await ops.act("a1", Action.CLOSE, "ops-anna", "", T0 + 5 * MIN, override=True)
    _, steps = await ops.alert("a1", T0 + 6 * MIN)
    assert [(st.action, st.override) for st in steps] == [
        ("resolve", True),
        ("close", False),
    ]
