"""The case workflow on a real registry store (SQLite and PostgreSQL): filed by the catalogue's
filing condition, dispatched to its department, disposed, verified by the sensor and closed, or
re-dispatched; urged when overdue; every step persisted with who and when, and in the feed."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import update

from device_registry import Changes, RegistryStore, StoreUnavailable
from device_registry.alerts.lifecycle import (
    SILENT_MS,
    Action,
    NoteRequired,
    Refused,
    StillActive,
)
from device_registry.alerts.operations import Policy, Unroutable
from device_registry.alerts.store import AlertFilter, OpsStore
from device_registry.db.tables import Alert, Device
from device_registry.errors import NotFound
from device_registry.http.auth import Principal, Role
from gridwatch.ground.catalogue import Category
from gridwatch.ground.contract import AlertEvent, AlertState, Birth, Location, new_id

T0 = 1_700_000_000_000
MIN = 60_000
DISTRICT = "310104"


def item(code: str) -> Category:
    found = Policy().catalogue.lookup(code, DISTRICT)
    assert found is not None, f"the shipped catalogue has no {code} for {DISTRICT}"
    return found


PONDING = item("0406")  # road waterlogging: filed by the centre, verified by the sensor
FOR_MS = PONDING.filing.for_s * 1000
WINDOW_MS = (PONDING.closure.verify_window_s or 0) * 1000
LIMIT_B = PONDING.limit_min("B") * MIN  # a grid cell of unknown area class counts as B
DEPT = {"code": PONDING.department.code, "zh": PONDING.department.zh,
        "en": PONDING.department.en}  # fmt: skip
HIGH = (PONDING.filing.above or 0.15) + 0.07
LOW = (PONDING.filing.above or 0.15) - 0.1


@pytest.fixture
async def ops(registry_url: str) -> AsyncIterator[OpsStore]:
    store = await RegistryStore.open(registry_url)
    yield OpsStore(store)
    await store.close()


def ponding(alert_id: str, device: str, at: int, state: AlertState = AlertState.RAISED,
            grid: str = "310104014001001", value: float = HIGH) -> AlertEvent:  # fmt: skip
    return AlertEvent(
        id=new_id(), gateway="gw1", seq=1, session=1, alert_id=alert_id, state=state,
        rule="ponding", category="0406", severity=PONDING.severity, device=device,
        point=PONDING.filing.point or "depth", location=Location(district=DISTRICT, grid=grid),
        value=value if state is not AlertState.CLEARED else LOW, threshold=PONDING.filing.above,
        unit="m", message="Ponding on the road", raised_at=at, ts=at,
    )  # fmt: skip


async def ingest(ops: OpsStore, *events: AlertEvent, now: int = T0) -> None:
    await ops.store.apply(Changes(now=now, alerts=list(events)))


async def steps_of(ops: OpsStore, alert_id: str) -> list[tuple[str, str, str]]:
    _, steps = await ops.alert(alert_id, T0)
    return [(s.action, s.after, s.actor) for s in steps]


async def test_the_catalogue_gives_the_workflow_what_it_needs() -> None:
    """The test below leans on these: ponding is filed by the centre after a hold, verified by
    the sensor over a window, and has a department."""
    assert PONDING.filing.auto and FOR_MS > 0 and WINDOW_MS > 0 and DEPT["code"]


async def test_a_case_is_filed_dispatched_disposed_verified_by_the_sensor_and_closed(
    ops: OpsStore,
) -> None:
    await ingest(ops, ponding("a1", "wl-1", T0))
    [a] = await ops.alerts(AlertFilter(), now=T0)
    assert (a.stage, a.stage_zh, a.class_code, a.area_class) == ("reported", "上报", "0406", "B")
    assert a.department is not None and a.department.code == DEPT["code"]  # the catalogue's
    assert a.category_name is not None and a.category_name.zh == PONDING.name.zh

    assert await ops.tick(T0 + FOR_MS - 1) == []  # not held long enough yet
    filed_at = T0 + FOR_MS
    assert [a for a, _ in await ops.tick(filed_at)] == ["a1"]
    [a] = await ops.alerts(AlertFilter(), now=filed_at)
    assert (a.stage, a.filed_by, a.dispatched_by, a.dispatch_count) == (
        "dispatched", "centre", "centre", 1,
    )  # fmt: skip
    assert a.due_at == filed_at + LIMIT_B and a.time_limit_min == LIMIT_B // MIN

    disposed_at = filed_at + 2 * MIN
    with pytest.raises(Refused, match="cannot verify a case that is dispatched"):
        await ops.act("a1", Action.VERIFY, "inspector-li", "dry", disposed_at)
    view = await ops.act("a1", Action.DISPOSE, "ops-anna", "inlet cleared", disposed_at)
    assert (view.stage, view.disposed_by, view.overdue) == ("disposed", "ops-anna", False)
    # the water is still there: the sensor waits, nobody may verify or close it
    assert await ops.tick(disposed_at + MIN) == []
    with pytest.raises(StillActive, match="cannot be verified yet: the sensor still reports"):
        await ops.act("a1", Action.VERIFY, "inspector-li", "dry", disposed_at + MIN)

    cleared_at = disposed_at + 2 * MIN
    await ingest(ops, ponding("a1", "wl-1", cleared_at, AlertState.CLEARED), now=cleared_at)
    assert await ops.tick(cleared_at + WINDOW_MS - 1) == []  # the window runs from the clear
    done = await ops.tick(cleared_at + WINDOW_MS)
    assert done == [("a1", "disposed -> closed")]
    _, steps = await ops.alert("a1", T0)
    assert [(s.action, s.before, s.after, s.actor) for s in steps] == [
        ("file", "reported", "filed", "centre"),
        ("dispatch", "filed", "dispatched", "centre"),
        ("dispose", "dispatched", "disposed", "ops-anna"),
        ("verify", "disposed", "verified", "sensor"),
        ("close", "verified", "closed", "centre"),
    ]
    assert "stayed clear" in steps[3].note and DEPT["zh"] in steps[1].note
    assert await ops.alerts(AlertFilter(), now=T0) == []  # closed cases are not listed
    [closed] = await ops.alerts(AlertFilter(stages=frozenset({"closed"})), now=T0)
    assert (closed.verified_by, closed.closed_by) == ("sensor", "centre")

    msgs = [e.payload for e in await ops.feed(0) if e.kind == "lifecycle"]
    assert [(m["action"], m["stage"]) for m in msgs] == [
        ("open", "reported"), ("file", "filed"), ("dispatch", "dispatched"),
        ("dispose", "disposed"), ("verify", "verified"), ("close", "closed"),
    ]  # fmt: skip
    last = msgs[-1]
    assert (last["class_code"], last["department"], last["area_class"]) == ("0406", DEPT, "B")
    assert (last["urged"], last["overdue"], last["dispatch_count"]) == (False, False, 1)


async def test_filing_looks_at_the_latest_value_and_files_at_ingest_once_held(
    ops: OpsStore,
) -> None:
    await ingest(ops, ponding("a1", "wl-1", T0, value=LOW))  # the edge's band: still raised
    later = T0 + FOR_MS + MIN
    assert await ops.tick(later) == []  # but under the filing line: not filed
    await ingest(ops, ponding("a1", "wl-1", later, AlertState.UPDATED), now=later)
    [a] = await ops.alerts(AlertFilter(), now=later)
    assert a.stage == "dispatched"  # held since T0, over the line again: filed at ingest


async def test_the_condition_back_during_the_window_re_dispatches(ops: OpsStore) -> None:
    await ingest(ops, ponding("a1", "wl-1", T0))
    await ops.tick(T0 + FOR_MS)
    await ingest(ops, ponding("a1", "wl-1", T0 + FOR_MS + MIN, AlertState.CLEARED))
    disposed_at = T0 + FOR_MS + 2 * MIN
    await ops.act("a1", Action.DISPOSE, "ops-anna", "pump ran", disposed_at)
    # the rain comes back: the edge raises the condition again, under a new alert id
    back = disposed_at + WINDOW_MS // 2
    await ingest(ops, ponding("a2", "wl-1", back), now=back)
    views = {a.alert_id: a for a in await ops.alerts(AlertFilter(), now=back)}
    assert views["a1"].stage == "dispatched" and views["a1"].dispatch_count == 2
    assert views["a1"].due_at == back + LIMIT_B  # a new time limit from the re-dispatch
    # the new alert is part of the case's incident, not a second case
    assert views["a2"].incident_id == views["a1"].incident_id and views["a2"].stage == "reported"
    assert await ops.tick(back + FOR_MS) == []
    assert (await steps_of(ops, "a1"))[-1] == ("reject", "dispatched", "sensor")
    _, steps = await ops.alert("a1", T0)
    assert steps[-1].note.startswith("re-dispatched: the sensor reports the condition again")
    # disposed again; this time the road stays dry for the window
    await ingest(ops, ponding("a2", "wl-1", back + MIN, AlertState.CLEARED), now=back + MIN)
    await ops.act("a1", Action.DISPOSE, "ops-anna", "inlet dredged", back + 2 * MIN)
    assert await ops.tick(back + 2 * MIN + WINDOW_MS) == [("a1", "disposed -> closed")]
    # the return was this case, not work of its own: it is closed with it
    closed = await ops.alerts(AlertFilter(stages=frozenset({"closed"})), now=T0)
    assert sorted(a.alert_id for a in closed) == ["a1", "a2"]
    assert await steps_of(ops, "a2") == [("close", "closed", "centre")]


async def test_still_there_a_window_after_disposal_re_dispatches(ops: OpsStore) -> None:
    await ingest(ops, ponding("a1", "wl-1", T0))
    await ops.tick(T0 + FOR_MS)
    disposed_at = T0 + FOR_MS + MIN
    await ops.act("a1", Action.DISPOSE, "ops-anna", "done", disposed_at)
    assert await ops.tick(disposed_at + WINDOW_MS - 1) == []
    assert await ops.tick(disposed_at + WINDOW_MS) == [("a1", "disposed -> dispatched")]
    _, steps = await ops.alert("a1", T0)
    assert "still reports the condition" in steps[-1].note


async def test_an_inspector_verifies_or_rejects_with_a_note(ops: OpsStore) -> None:
    grids = {"a1": "G-1", "b1": "G-2"}
    await ingest(ops, *(ponding(a, f"wl-{a}", T0, grid=g) for a, g in grids.items()))
    await ops.tick(T0 + FOR_MS)
    for a, g in grids.items():
        await ingest(ops, ponding(a, f"wl-{a}", T0 + FOR_MS, AlertState.CLEARED, grid=g))
        await ops.act(a, Action.DISPOSE, "ops", "done", T0 + FOR_MS + MIN)
    at = T0 + FOR_MS + 2 * MIN
    for action in (Action.VERIFY, Action.REJECT):
        with pytest.raises(NoteRequired, match=f"{action.value} needs a note"):
            await ops.act("a1", action, "inspector-li", " ", at)
    view = await ops.act("a1", Action.REJECT, "inspector-li", "silt still in the inlet", at)
    assert (view.stage, view.dispatch_count, view.due_at) == ("dispatched", 2, at + LIMIT_B)
    view = await ops.act("b1", Action.VERIFY, "inspector-li", "road dry, inlet clear", at)
    assert (view.stage, view.verified_by) == ("verified", "inspector-li")
    view = await ops.act("b1", Action.CLOSE, "ops-anna", "", at + MIN)
    assert view.stage == "closed" and view.notes["verify"] == "road dry, inlet clear"


async def test_an_operator_files_and_dispatches_to_another_department(ops: OpsStore) -> None:
    await ingest(ops, ponding("a1", "wl-1", T0))
    view = await ops.act("a1", Action.FILE, "ops-anna", "seen on camera", T0 + MIN)
    assert (view.stage, view.filed_by, view.dispatched_by) == ("dispatched", "ops-anna", "centre")
    other = {"code": "XH-RD", "zh": "区道路管理所", "en": "District roads office"}
    view = await ops.act("a1", Action.DISPATCH, "ops-anna", "roads own this inlet", T0 + 2 * MIN,
                         department=other)  # fmt: skip
    assert view.department is not None and view.department.model_dump() == other
    assert view.dispatch_count == 2


async def test_overdue_cases_are_urged_once_per_limit(ops: OpsStore) -> None:
    await ingest(ops, ponding("a1", "wl-1", T0), ponding("a2", "wl-2", T0, grid="G-2"))
    await ops.tick(T0 + FOR_MS)
    due = T0 + FOR_MS + LIMIT_B
    await ops.act("a2", Action.DISPOSE, "ops", "done", due - 1)  # acted in time: never urged
    with pytest.raises(Refused):  # the department has acted: nothing to urge
        await ops.act("a2", Action.URGE, "ops-anna", "why", due + 1)

    async def urged(now: int) -> list[str]:
        return [a for a, step in await ops.tick(now) if step == "dispatched -> dispatched"]

    assert await urged(due) == []
    assert await urged(due + 1) == ["a1"]
    assert await urged(due + LIMIT_B) == []  # once per limit...
    assert await urged(due + 1 + LIMIT_B) == ["a1"]  # ...then again
    views = await ops.alerts(AlertFilter(stages=frozenset({"dispatched"})), now=due + LIMIT_B + 2)
    [a] = [v for v in views if v.alert_id == "a1"]
    assert (a.overdue, a.urged, a.urge_count, a.urged_at) == (True, True, 2, due + 1 + LIMIT_B)
    urges = [e.payload for e in await ops.feed(0) if e.payload.get("action") == "urge"]
    assert [(u["actor"], u["stage"], u["urged"], u["overdue"]) for u in urges] == [
        ("centre", "dispatched", True, True), ("centre", "dispatched", True, True),
    ]  # fmt: skip
    # an operator urges too, with a note
    with pytest.raises(NoteRequired):
        await ops.act("a1", Action.URGE, "ops-anna", "", due + LIMIT_B + 3)
    view = await ops.act("a1", Action.URGE, "ops-anna", "called the drainage office",
                         due + LIMIT_B + 3)  # fmt: skip
    assert view.urge_count == 3


async def test_two_registry_processes_urge_a_case_once(ops: OpsStore) -> None:
    """Registry processes scale out on one database: both clocks tick, one wins."""
    await ingest(ops, ponding("a1", "wl-1", T0))
    await ops.tick(T0 + FOR_MS)
    other_store = await RegistryStore.open(
        ops.store.engine.url.render_as_string(hide_password=False)
    )
    other = OpsStore(other_store)
    late = T0 + FOR_MS + LIMIT_B + MIN
    try:
        results = await asyncio.gather(*(o.tick(late) for o in (ops, other)),
                                       return_exceptions=True)  # fmt: skip
        # SQLite may refuse the loser's stale write outright (it retries on its next tick)
        done = [r for r in results if not isinstance(r, BaseException)]
        assert sorted(a for r in done for a, _ in r) == ["a1"]
        assert all(isinstance(r, StoreUnavailable) for r in results if isinstance(r, BaseException))
        assert await other.tick(late + 1) == []
        assert [e.payload.get("action") for e in await ops.feed(0)].count("urge") == 1
    finally:
        await other_store.close()


async def test_one_incident_is_one_case(ops: OpsStore) -> None:
    """Two sensors in one grid cell see the same ponding: one case is filed, not two."""
    await ingest(ops, ponding("a1", "wl-1", T0), ponding("a2", "wl-2", T0 + 20_000))
    await ingest(ops, ponding("a3", "wl-3", T0 + 30_000, grid="G-99"))
    await ops.tick(T0 + FOR_MS + 30_000)
    views = {a.alert_id: a for a in await ops.alerts(AlertFilter(), now=T0)}
    assert views["a1"].incident_id == views["a2"].incident_id != views["a3"].incident_id
    assert {k: v.stage for k, v in views.items()} == {
        "a1": "dispatched", "a2": "reported", "a3": "dispatched",
    }  # fmt: skip
    opened = [e.payload for e in await ops.feed(0) if e.payload.get("action") == "open"]
    assert [(p["alert_id"], p["incident_new"]) for p in opened] == [
        ("a1", True), ("a2", False), ("a3", True),
    ]  # fmt: skip
    # the operator acts on the incident: what the stage allows moves, the rest says why
    acted = await ops.act_on_incident(views["a1"].incident_id, Action.DISPOSE, "ops", "done", T0)
    assert [a.alert_id for a in acted.applied] == ["a1"]
    assert [(s.alert_id, s.stage) for s in acted.skipped] == [("a2", "reported")]
    with pytest.raises(NotFound):
        await ops.act_on_incident("no-such-incident", Action.FILE, "ops", "", T0)


async def test_a_reported_alert_that_cleared_is_closed_never_filed(ops: OpsStore) -> None:
    await ingest(ops, ponding("a1", "wl-1", T0))
    with pytest.raises(StillActive, match="cannot be closed yet"):
        await ops.act("a1", Action.CLOSE, "ops", "", T0 + MIN)
    await ingest(ops, ponding("a1", "wl-1", T0 + MIN, AlertState.CLEARED), now=T0 + MIN)
    assert await ops.tick(T0 + FOR_MS) == []  # cleared before the hold: no case
    view = await ops.act("a1", Action.CLOSE, "ops", "brief shower", T0 + FOR_MS)
    assert (view.stage, view.filed_at, view.cleared_at) == ("closed", None, T0 + MIN)


async def test_feed_is_pruned_except_what_a_dead_letter_needs(ops: OpsStore) -> None:
    await ingest(ops, ponding("a1", "wl-1", T0, value=LOW), now=T0)  # under the filing line
    await ingest(ops, ponding("a2", "wl-2", T0, grid="X", value=LOW), now=T0 + 10 * MIN)
    _, second, third, _ = await ops.feed(0)
    await ops.dead_letter(1, second.seq, 6, "HTTP 500", T0 + MIN)
    assert await ops.prune_feed(T0 + MIN) == 1  # the first; the second waits for its replay
    assert [e.seq for e in await ops.feed(0)][:2] == [second.seq, third.seq]


async def test_an_alert_stored_before_the_contract_had_ranges_still_moves(ops: OpsStore) -> None:
    """A row written before the contract bounded its strings (an 800 KB street) must not stop
    the ingest of its clear: the platform message is built from what is stored."""
    await ingest(ops, ponding("old-1", "wl-1", T0))
    legacy = {"district": DISTRICT, "street": "x" * 800_000, "grid": "310104014001001"}
    async with ops.store.transaction() as s:
        await s.execute(update(Alert).where(Alert.alert_id == "old-1").values(location=legacy))
    await ingest(ops, ponding("old-1", "wl-1", T0 + MIN, AlertState.CLEARED), now=T0 + MIN)
    view = await ops.act("old-1", Action.CLOSE, "ops", "", T0 + 2 * MIN)
    assert view.stage == "closed"


async def test_two_operators_closing_at_once_close_each_alert_once(ops: OpsStore) -> None:
    """Two operators (through two registry processes) close the same cleared alerts at once:
    each alert is closed once, by one of them, with one lifecycle message; the other is told
    it was closed already."""
    ids = [f"c{n}" for n in range(5)]
    await ingest(ops, *(ponding(i, f"wl-{i}", T0, grid=f"G-{i}") for i in ids))
    await ingest(ops, *(ponding(i, f"wl-{i}", T0 + MIN, AlertState.CLEARED, grid=f"G-{i}")
                        for i in ids), now=T0 + MIN)  # fmt: skip
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
        assert all(sk.reason == "cannot close a case that is closed" for sk in r.skipped)
    closes = [e.payload["alert_id"] for e in await ops.feed(0)
              if e.kind == "lifecycle" and e.payload.get("action") == "close"]  # fmt: skip
    assert sorted(closes) == ids


async def test_a_case_whose_sensor_is_gone_can_be_verified(ops: OpsStore) -> None:
    """A device retired, or silent for a day: its case is verified without an override,
    recorded with what the sensor last said and why it was not waited for."""
    birth = Birth(gateway="gw1", session=1, ts=T0, devices=["wl-1", "wl-2"])
    await ops.store.apply(Changes(now=T0, status=[birth]))
    await ingest(ops, ponding("a1", "wl-1", T0), ponding("a2", "wl-2", T0, grid="G-2"))
    await ops.tick(T0 + FOR_MS)
    for alert_id in ("a1", "a2"):
        await ops.act(alert_id, Action.DISPOSE, "ops", "done", T0 + FOR_MS + 1)
    with pytest.raises(StillActive):  # a day exactly: not yet
        await ops.act("a1", Action.VERIFY, "li", "dry", T0 + SILENT_MS)
    view = await ops.act("a1", Action.VERIFY, "li", "dry", T0 + SILENT_MS + 1)
    assert view.stage == "verified"
    async with ops.store.transaction() as s:
        await s.execute(update(Device).where(Device.id == "gw1:wl-2").values(retired_at=T0 + MIN))
    view = await ops.act("a2", Action.VERIFY, "li", "sensor removed", T0 + FOR_MS + 2)
    assert view.stage == "verified"
    _, steps = await ops.alert("a2", T0)
    assert steps[-1].sensor.endswith("; its device is retired") and not steps[-1].override
    _, steps = await ops.alert("a1", T0)
    assert steps[-1].sensor.endswith("; no reading for 24 h")


async def test_an_override_needs_a_reason_and_is_recorded(ops: OpsStore) -> None:
    await ingest(ops, ponding("a1", "wl-1", T0))
    await ops.tick(T0 + FOR_MS)
    await ops.act("a1", Action.DISPOSE, "ops", "pumped", T0 + FOR_MS + 1)
    with pytest.raises(NoteRequired):
        await ops.act("a1", Action.VERIFY, "ops", "broken", T0 + FOR_MS + 2, override=True)
    why = "gauge under silt since 03:10, road dry"
    view = await ops.act("a1", Action.VERIFY, "ops-anna", why, T0 + FOR_MS + 3, override=True)
    assert (view.stage, view.verified_by, view.notes["verify"]) == ("verified", "ops-anna", why)
    _, steps = await ops.alert("a1", T0)
    assert (steps[-1].override, steps[-1].sensor.endswith("; still reported")) == (True, True)
    [msg] = [e.payload for e in await ops.feed(0) if e.payload.get("action") == "verify"]
    assert (msg["override"], msg["note"]) == (True, why)


async def test_a_dispatch_without_a_department_is_refused_in_words(ops: OpsStore) -> None:
    store = OpsStore(ops.store)
    ev = ponding("a1", "wl-1", T0).model_copy(update={"category": "9999"})
    await ingest(store, ev)
    view = await store.act("a1", Action.FILE, "ops", "", T0 + 1)
    assert (view.stage, view.department) == ("filed", None)  # no catalogue item: stays filed
    with pytest.raises(Unroutable, match="no department to dispatch to"):
        await store.act("a1", Action.DISPATCH, "ops", "", T0 + 2)
