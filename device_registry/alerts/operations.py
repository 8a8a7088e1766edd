"""The store side of the case workflow: alerts become cases, the clock files, verifies and urges,
and every step goes to the delivery feed.

``on_ingest`` runs inside the bridge's ingest transaction (``RegistryStore.apply``): a new alert
is stored as ``reported`` with its incident, its component and its grid cell's area class; it is
filed (and dispatched) at once when the catalogue's filing condition already holds; a raise of a
condition whose case was disposed re-dispatches that case. "A condition" is one rule of one
device: after a clear the edge raises it again under a new alert id. ``tick`` is the clock (every few
seconds, ``delivery/escalator.py``): it files what has now held long enough, lets the sensor
verify and close disposed cases, and urges overdue ones. Operators' actions run in transactions
of their own. Each step appends its platform message to the feed in the same transaction.
Decisions are the pure cores' (``lifecycle``, ``correlation``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from device_registry.alerts import correlation, lifecycle, wording
from device_registry.alerts.lifecycle import CENTRE, SENSOR, Action, Stage, Transition
from device_registry.db.tables import (
    Alert,
    AlertAction,
    AlertOps,
    Device,
    DeviceInfo,
    Gateway,
    PlatformEvent,
    device_key,
)
from device_registry.inventory.places import coordinates, resolve_site
from gridwatch.ground.alertwords import platform_alert
from gridwatch.ground.catalogue import Catalogue, Category, default_catalogue_dir, load_catalogue
from gridwatch.ground.contract import (
    AlertEvent,
    AlertState,
    Birth,
    Location,
    PlatformLifecycle,
)
from gridwatch.ground.i18n import _
from gridwatch.ground.places import shipped_places

logger = logging.getLogger(__name__)

Decide = Callable[[AsyncSession, Alert, AlertOps, int], Awaitable[bool]]
"""One of the clock's decisions on one case: whether it took a step."""

CLOCK_BATCH = 500
"""Cases the clock looks at per kind and round: a backlog is worked off over rounds."""


@dataclass
class Policy:
    """The data the case workflow decides by."""

    catalogue_dir: str | None = None
    time_limit_scale: float = 1.0
    """Every time of the workflow (filing hold, time limit, verification window) times this
    (``--escalation-scale``): below 1 only for a drill."""
    rules: Sequence[correlation.Rule] = field(default_factory=lambda: correlation.DEFAULT_RULES)

    @functools.cached_property
    def catalogue(self) -> Catalogue:
        return load_catalogue(self.catalogue_dir or default_catalogue_dir())


def drill_policy(scale: float) -> Policy:
    """The policy of a process run with ``--escalation-scale``; a drill is said at WARNING, as
    nobody must run a city on a drill's time limits by mistake."""
    if scale != 1:
        logger.warning("case drill: every filing hold, time limit and verification window is "
                       "x%g for cases from now on (--escalation-scale); restart without it to "
                       "end the drill", scale)  # fmt: skip
    return Policy(time_limit_scale=scale)


class Unroutable(ValueError):
    """A dispatch with no department: none given, none in the catalogue (an API 422)."""


def area_class(district: str, grid: str) -> str:
    """The area class (A core, B, C) of a grid cell, from the district's places data; the
    file's default for a cell it does not list, ``lifecycle.AREA_DEFAULT`` for a district
    without a places file."""
    places = shipped_places().get(district)
    if places is None:
        return lifecycle.AREA_DEFAULT
    cell = places.by_cell.get(grid)
    return cell.area_class if cell is not None else places.default_area_class


def department_of(entry: Category | None) -> dict[str, str] | None:
    """The catalogue's responsible department of a category, as a case stores it."""
    if entry is None:
        return None
    d = entry.department
    return {"code": d.code, "zh": d.zh, "en": d.en}


def _noted(t: Transition, notes: tuple[str, str]) -> Transition:
    """A step of the centre's own with its note in Chinese beside the English."""
    return dataclasses.replace(t, note_zh=notes[1])


def _name_of(entry: Category | None) -> dict[str, str] | None:
    """A catalogue item's name as a platform alert's sentence names the category."""
    return None if entry is None else {"zh": entry.name.zh, "en": entry.name.en}


def _event(kind: str, alert: Alert, payload: dict[str, object], at: int) -> PlatformEvent:
    return PlatformEvent(
        at=at, kind=kind, alert_id=alert.alert_id, district=alert.district,
        category=alert.category, severity=alert.severity, payload=payload,
    )  # fmt: skip


def _stored_location(alert: Alert) -> Location:
    """The location as the registry stored it, not validated again: a row written before the
    contract bounded its strings must not stop the ingest transaction that reports on it (the
    platform messages carry what is stored; see ``PlatformAlert``)."""
    return Location.model_construct(**alert.location)


def _lifecycle_msg(
    alert: Alert, ops: AlertOps, t: Transition | None, at: int, new_incident: bool = False
) -> PlatformLifecycle:
    stage = Stage(ops.stage)
    return PlatformLifecycle.model_validate(dict(
        alert_id=alert.alert_id, incident_id=ops.incident_id, incident_new=new_incident,
        action="open" if t is None else t.action.value, stage=stage.value,
        actor=CENTRE if t is None else t.actor, note="" if t is None else t.note,
        note_zh="" if t is None else t.note_zh,
        override=t is not None and t.override, sensor="" if t is None else t.sensor,
        gateway=alert.gateway_id, device=alert.device_id.partition(":")[2],
        category=alert.category, class_code=lifecycle.class_code(alert.category),
        component_id=ops.component_id, department=ops.department, area_class=ops.area_class,
        severity=alert.severity, location=_stored_location(alert), due_at=ops.due_at,
        time_limit_min=ops.time_limit_min, overdue=lifecycle.is_overdue(stage, ops.due_at, at),
        urged=bool(ops.urge_count), urge_count=ops.urge_count or 0,
        dispatch_count=ops.dispatch_count or 0, ts=at,
    ))  # fmt: skip


def _sensed(a: Alert) -> lifecycle.Sensed:
    changed = a.cleared_at if a.state == AlertState.CLEARED.value and a.cleared_at else a.raised_at
    return lifecycle.Sensed(state=a.state, point=a.point, value=a.value,
                            raised_at=a.raised_at, changed_at=changed)  # fmt: skip


def _still_reported(a: Alert) -> str | None:
    return lifecycle.still_reported(a.state, a.message, a.point, a.value, a.unit, a.threshold)


class AlertOperations:
    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self.on_feed: list[Callable[[], None]] = []
        """Called after a transaction appended to the feed (wakes this process's readers)."""

    @property
    def scale(self) -> float:
        return self.policy.time_limit_scale

    def entry(self, alert: Alert) -> Category | None:
        return self.policy.catalogue.lookup(alert.category, alert.district)

    def fed(self) -> None:
        for notify in self.on_feed:
            notify()

    # ---- inside the ingest transaction ------------------------------------------------------

    async def on_ingest(
        self, s: AsyncSession, events: Sequence[AlertEvent], births: Sequence[Birth], now: int
    ) -> bool:
        """Returns whether the feed grew."""
        for b in births:
            await self._device_info(s, b, now)
        fed = False
        for ev in events:
            alert = await s.get(Alert, ev.alert_id)
            if alert is None:
                continue
            named = platform_alert(ev, _name_of(self.entry(alert)))
            s.add(_event("alert", alert, named.model_dump(mode="json"), now))
            fed = True
            ops = await s.get(AlertOps, ev.alert_id)
            if ops is None:
                ops = await self._open(s, alert, now)
            if ev.state is not AlertState.CLEARED:
                await self._file_if_due(s, alert, ops, now)
            await s.flush()
        return fed

    async def _open(self, s: AsyncSession, alert: Alert, now: int) -> AlertOps:
        """A new alert: ``reported``, in its incident; a raise of the condition of a case that
        is still live joins that case's incident, and re-dispatches it if it was disposed."""
        live = await self._live_case(s, alert)
        joined = live[1].incident_id if live else await self._incident(s, alert)
        component, area = await self._place_facts(s, alert)
        ops = AlertOps(
            alert_id=alert.alert_id, stage=Stage.REPORTED.value,
            incident_id=joined or f"inc-{uuid.uuid4().hex[:12]}", component_id=component,
            area_class=area, dispatch_count=0, urge_count=0,
        )  # fmt: skip
        s.add(ops)
        msg = _lifecycle_msg(alert, ops, None, now, new_incident=joined is None)
        s.add(_event("lifecycle", alert, msg.model_dump(mode="json"), now))
        if live is not None:
            await s.flush()
            await self._verify_by_sensor(s, *live, now)
        return ops

    async def _place_facts(self, s: AsyncSession, alert: Alert) -> tuple[str | None, str]:
        """The component the alert's device is attached to, and the area class of its grid
        cell (``area_class``)."""
        device = await s.get(Device, alert.device_id)
        return (device.component_id if device else None), area_class(alert.district, alert.grid)

    async def _live_case(self, s: AsyncSession, alert: Alert) -> tuple[Alert, AlertOps] | None:
        """The filed, not yet closed case of the same condition (the device's same rule)."""
        q = (
            select(Alert, AlertOps)
            .join(AlertOps, AlertOps.alert_id == Alert.alert_id)
            .where(Alert.device_id == alert.device_id, Alert.rule == alert.rule,
                   Alert.category == alert.category, Alert.alert_id != alert.alert_id,
                   AlertOps.stage.in_([st.value for st in lifecycle.LIVE]))
            .order_by(Alert.raised_at.desc())
            .limit(1)
        )  # fmt: skip
        row = (await s.execute(q)).first()
        return None if row is None else (row[0], row[1])

    async def _incident(self, s: AsyncSession, alert: Alert) -> str | None:
        rules = self.policy.rules
        since = alert.raised_at - correlation.lookback_ms(rules)
        q = (
            select(Alert, AlertOps.incident_id, AlertOps.stage)
            .join(AlertOps, AlertOps.alert_id == Alert.alert_id)
            .where(Alert.raised_at >= since, Alert.category == alert.category)
        )
        recent = [_candidate(a, inc, stage) for a, inc, stage in await s.execute(q)]
        return correlation.incident_for(_candidate(alert, None, "reported"), recent, rules)

    async def _device_info(self, s: AsyncSession, b: Birth, now: int) -> None:
        for info in b.device_info:
            key = device_key(b.gateway, info.device)
            row = await s.get(DeviceInfo, key)
            if row is None:
                row = DeviceInfo(device_id=key, updated_at=now)
                s.add(row)
            row.profile, row.interval_s = info.profile, info.interval_s
            row.firmware, row.updated_at = info.firmware, now
            if info.location is not None:
                await _place(s, key, info.location)

    # ---- the centre's own steps ---------------------------------------------------------------

    async def _file_if_due(self, s: AsyncSession, alert: Alert, ops: AlertOps, now: int) -> bool:
        """File (and dispatch) a reported alert whose catalogue filing condition holds, unless
        its incident or its condition already has a case."""
        entry = self.entry(alert)
        if ops.stage != Stage.REPORTED.value or entry is None:
            return False
        if not lifecycle.should_file(entry, _sensed(alert), now, self.scale):
            return False
        if await self._incident_has_case(s, ops) or await self._live_case(s, alert):
            return False
        f = entry.filing
        line = f.above if f.above is not None else f.below
        said = lifecycle.reading(alert.point, alert.value, alert.unit,
                                 None if line is None else float(line))  # fmt: skip
        notes = wording.centre_note(wording.AUTO_FILED, {"filing": f.en, "reading": said},
                                    {"filing": f.zh, "reading": said})  # fmt: skip
        t = _noted(lifecycle.step(Stage.REPORTED, Action.FILE, CENTRE, now, notes[0]), notes)
        return await self._apply(s, alert, ops, t)

    async def _incident_has_case(self, s: AsyncSession, ops: AlertOps) -> bool:
        q = select(AlertOps.alert_id).where(
            AlertOps.incident_id == ops.incident_id, AlertOps.alert_id != ops.alert_id,
            AlertOps.stage.in_([st.value for st in lifecycle.LIVE]),
        ).limit(1)  # fmt: skip
        return (await s.scalar(q)) is not None

    async def _verify_by_sensor(
        self, s: AsyncSession, alert: Alert, ops: AlertOps, now: int
    ) -> bool:
        """Let the sensor decide a disposed case: verified and closed, or re-dispatched."""
        entry = self.entry(alert)
        if entry is None or ops.stage != Stage.DISPOSED.value:
            return False
        latest = await self._latest(s, alert)
        case = lifecycle.Case(Stage(ops.stage), ops.disposed_at, _sensed(latest))
        verdict = lifecycle.verify_by_sensor(entry, case, now, self.scale)
        window = entry.closure.verify_window_s
        if verdict is Action.VERIFY:
            notes = wording.centre_note(wording.SENSOR_VERIFIED, {"window": window})
            t = _noted(lifecycle.step(Stage.DISPOSED, Action.VERIFY, SENSOR, now, notes[0]),
                       notes)  # fmt: skip
            if not await self._apply(s, alert, ops, t):
                return False
            notes = wording.centre_note(wording.SENSOR_CLOSED, {})
            closing = _noted(lifecycle.step(Stage.VERIFIED, Action.CLOSE, CENTRE, now, notes[0]),
                             notes)  # fmt: skip
            return await self._apply(s, alert, ops, closing)
        if verdict is Action.REJECT:
            back = latest.raised_at > (ops.disposed_at or 0) and latest.state != "cleared"
            notes = (wording.centre_note(wording.SENSOR_BACK, {"reading": _still_reported(latest)})
                     if back else wording.centre_note(wording.SENSOR_STILL, {"window": window}))  # fmt: skip
            t = _noted(lifecycle.step(Stage.DISPOSED, Action.REJECT, SENSOR, now, notes[0]), notes)
            return await self._apply(s, alert, ops, t)
        return False

    async def _latest(self, s: AsyncSession, alert: Alert) -> Alert:
        """The newest alert of the case's condition: after a clear, the edge raises it again
        under a new alert id, from the same rule of the same device."""
        q = (
            select(Alert)
            .where(Alert.device_id == alert.device_id, Alert.rule == alert.rule,
                   Alert.category == alert.category, Alert.raised_at >= alert.raised_at)
            .order_by(Alert.raised_at.desc())
            .limit(1)
        )  # fmt: skip
        return (await s.scalar(q)) or alert

    async def _urge_if_due(self, s: AsyncSession, alert: Alert, ops: AlertOps, now: int) -> bool:
        limit = (
            None if ops.time_limit_min is None else round(ops.time_limit_min * 60_000 * self.scale)
        )
        if not lifecycle.needs_urge(Stage(ops.stage), ops.due_at, limit, ops.urged_at, now):
            return False
        assert ops.due_at is not None
        notes = wording.centre_note(wording.AUTO_URGED, {
            "overdue_min": (now - ops.due_at) // 60_000, "limit": ops.time_limit_min})  # fmt: skip
        t = _noted(lifecycle.step(Stage(ops.stage), Action.URGE, CENTRE, now, notes[0]), notes)
        return await self._apply(s, alert, ops, t)

    async def tick(self, s: AsyncSession, now: int) -> list[tuple[str, str]]:
        """The clock's round: file what has held long enough, let sensors verify disposed
        cases, urge overdue ones. Returns (alert id, action) of each step taken."""
        done: list[tuple[str, str]] = []
        waiting = [st.value for st in lifecycle.WAITING]
        rounds: tuple[tuple[Any, Decide], ...] = (
            ((Alert.state != AlertState.CLEARED.value)
             & (AlertOps.stage == Stage.REPORTED.value), self._file_if_due),
            (AlertOps.stage == Stage.DISPOSED.value, self._verify_by_sensor),
            (AlertOps.stage.in_(waiting) & (AlertOps.due_at < now), self._urge_if_due),
        )  # fmt: skip
        for where, decide in rounds:
            q = (
                select(Alert, AlertOps)
                .join(AlertOps, AlertOps.alert_id == Alert.alert_id)
                .where(where)
                .order_by(Alert.raised_at)
                .limit(CLOCK_BATCH)
            )
            for alert, ops in list(await s.execute(q)):
                before = ops.stage
                if await decide(s, alert, ops, now):
                    done.append((alert.alert_id, f"{before} -> {ops.stage}"))
        return done

    # ---- every step, by people, the centre or the sensor --------------------------------------

    async def act(
        self, s: AsyncSession, alert_id: str, action: Action, actor: str, note: str, now: int,
        override: bool = False, department: dict[str, str] | None = None,
    ) -> Transition | None:  # fmt: skip
        """None when there is no such alert; ``lifecycle.Refused`` when the stage or the sensor
        forbids it, ``lifecycle.NoteRequired`` for a step without the note it needs,
        ``Unroutable`` for a dispatch with no department."""
        alert = await s.get(Alert, alert_id)
        ops = await s.get(AlertOps, alert_id)
        if alert is None or ops is None:
            return None
        active = _still_reported(await self._latest(s, alert))
        gone = await _sensor_gone(s, alert, now) if active is not None else None
        t = lifecycle.step(Stage(ops.stage), action, actor, now, note, active, gone, override)
        if not await self._apply(s, alert, ops, t, department):
            await s.refresh(ops)
            raise lifecycle.Refused(Stage(ops.stage), action)
        return t

    async def _apply(
        self, s: AsyncSession, alert: Alert, ops: AlertOps, t: Transition,
        department: dict[str, str] | None = None,
    ) -> bool:  # fmt: skip
        """Record ``t`` if the case is still where it was decided from; a filing is followed
        by the dispatch to the catalogue's department. False: another process moved it."""
        if t.action is Action.DISPATCH:
            department = department or ops.department or department_of(self.entry(alert))
            if department is None:
                raise Unroutable(_(wording.NO_DEPARTMENT).format(code=alert.category))
        # two operators (or two registry processes, or a person and the clock) acting on one
        # case at once: only the one whose conditional update finds the stage it decided from
        # (for an urging, also the last urging) moves it; on PostgreSQL the other waits, then
        # matches nothing
        claim_q = update(AlertOps).where(
            AlertOps.alert_id == alert.alert_id, AlertOps.stage == t.before.value
        )
        if t.action is Action.URGE:
            last = AlertOps.urged_at
            claim_q = claim_q.where(last.is_(None) if ops.urged_at is None
                                    else last == ops.urged_at).values(urged_at=t.at)  # fmt: skip
        claim = await s.execute(
            claim_q.values(stage=t.after.value).execution_options(synchronize_session=False)
        )
        if not getattr(claim, "rowcount", 0):
            return False
        self._record(s, alert, ops, t, department)
        if t.action is Action.FILE:
            await self._dispatch_by_catalogue(s, alert, ops, t.at)
        if t.action is Action.CLOSE and t.before is Stage.VERIFIED:
            await self._close_followers(s, alert, ops, t.at)
        return True

    async def _close_followers(self, s: AsyncSession, case: Alert, ops: AlertOps, at: int) -> None:
        """A closed case takes with it the alerts its incident gathered and never filed (a
        neighbour's sensor, the condition's return) whose devices have cleared them: they were
        this case, not work of their own. One still reported stays, for people to look at."""
        q = (
            select(Alert, AlertOps)
            .join(AlertOps, AlertOps.alert_id == Alert.alert_id)
            .where(AlertOps.incident_id == ops.incident_id, AlertOps.alert_id != case.alert_id,
                   AlertOps.stage == Stage.REPORTED.value,
                   Alert.state == AlertState.CLEARED.value)
        )  # fmt: skip
        notes = wording.centre_note(wording.CLOSED_WITH_CASE, {"case": case.alert_id})
        for alert, follower in list(await s.execute(q)):
            t = _noted(lifecycle.step(Stage.REPORTED, Action.CLOSE, CENTRE, at, notes[0]), notes)
            await self._apply(s, alert, follower, t)

    async def _dispatch_by_catalogue(
        self, s: AsyncSession, alert: Alert, ops: AlertOps, at: int
    ) -> None:
        department = department_of(self.entry(alert))
        if department is None:
            return  # an operator dispatches it, naming the department
        facts = {"area": ops.area_class, "limit": ops.time_limit_min}
        notes = wording.centre_note(wording.AUTO_DISPATCHED,
                                    {**facts, "department": department["zh"]},  # as ever
                                    {**facts, "department": department["zh"]})  # fmt: skip
        t = _noted(lifecycle.step(Stage.FILED, Action.DISPATCH, CENTRE, at, notes[0]), notes)
        await self._apply(s, alert, ops, t, department)

    def _record(
        self, s: AsyncSession, alert: Alert, ops: AlertOps, t: Transition,
        department: dict[str, str] | None,
    ) -> None:  # fmt: skip
        ops.stage = t.after.value
        by = {Action.FILE: "filed", Action.DISPATCH: "dispatched", Action.DISPOSE: "disposed",
              Action.VERIFY: "verified", Action.CLOSE: "closed"}.get(t.action)  # fmt: skip
        if by:
            setattr(ops, f"{by}_by", t.actor)
            setattr(ops, f"{by}_at", t.at)
        if t.action is Action.FILE or t.action is Action.REJECT:
            # the time limit runs from filing, and again from each re-dispatch
            entry = self.entry(alert)
            limit = entry.limit_min(ops.area_class or lifecycle.AREA_DEFAULT) if entry else None
            ops.time_limit_min = limit
            ops.due_at = lifecycle.due_at(limit, t.at, self.scale)
        if t.action is Action.DISPATCH or t.action is Action.REJECT:
            ops.department = department or ops.department
            ops.dispatch_count = (ops.dispatch_count or 0) + 1
            ops.dispatched_at = t.at
        if t.action is Action.URGE:
            ops.urged_at, ops.urge_count = t.at, (ops.urge_count or 0) + 1
        s.add(AlertAction(alert_id=alert.alert_id, action=t.action.value, before=t.before.value,
                          after=t.after.value, actor=t.actor, note=t.note, note_zh=t.note_zh,
                          at=t.at,
                          override=t.override, sensor=t.sensor))  # fmt: skip
        msg = _lifecycle_msg(alert, ops, t, t.at)
        s.add(_event("lifecycle", alert, msg.model_dump(mode="json"), t.at))


async def _sensor_gone(s: AsyncSession, alert: Alert, now: int) -> str | None:
    """Why the alert's sensor counts as gone (``lifecycle.sensor_gone``): its device or gateway
    retired, or nothing from it (a reading, an alert update) for too long."""
    device = await s.get(Device, alert.device_id)
    gateway = await s.get(Gateway, alert.gateway_id)
    retired = (device is not None and device.retired_at is not None) or (
        gateway is not None and gateway.retired_at is not None
    )
    heard = [t for t in (alert.updated_at, device.last_seen if device else None) if t is not None]
    return lifecycle.sensor_gone(retired, max(heard, default=None), now)


async def _place(s: AsyncSession, device_id: str, loc: Location) -> None:
    """Site a device where its gateway says it is, unless an installer placed it already;
    its coordinates too, unless it has its own (an installer's, or an earlier birth's)."""
    device = await s.get(Device, device_id)
    if device is None:
        return
    if device.site_id is None:
        device.site_id = await resolve_site(s, loc)
    if device.registered_at is None and (device.lat, device.lon) == (None, None):
        device.lat, device.lon = coordinates(loc)


def _candidate(a: Alert, incident: str | None, stage: str) -> correlation.Candidate:
    return correlation.Candidate(
        alert_id=a.alert_id, raised_at=a.raised_at, district=a.district, grid=a.grid,
        category=a.category, gateway=a.gateway_id, device=a.device_id, incident_id=incident,
        waiting=Stage(stage) in OPEN_TO_JOIN,
    )  # fmt: skip


OPEN_TO_JOIN = frozenset({Stage.REPORTED, Stage.FILED, Stage.DISPATCHED})
"""An incident in these stages still takes new alerts: a disposed one is not reopened by a late
alert of a neighbour (its own condition's return re-dispatches it: ``_open``)."""
