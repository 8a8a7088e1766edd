"""The store side of alert operations: lifecycle, correlation, escalation and the delivery feed.

``on_ingest`` runs inside the bridge's ingest transaction (``RegistryStore.apply``): a new alert
gets its stage, incident and due time, a device clear moves its stage, and each change appends its
platform message to the feed in the same transaction. Operators' actions and escalations do the
same in transactions of their own. Decisions are the pure cores' (``lifecycle``, ``correlation``).
"""

from __future__ import annotations

import functools
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from device_registry.alerts import correlation, lifecycle
from device_registry.alerts.lifecycle import Action, Stage, Transition
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
from gridwatch.ground.catalogue import Catalogue, default_catalogue_dir, load_catalogue
from gridwatch.ground.contract import (
    AlertEvent,
    AlertState,
    Birth,
    Location,
    PlatformAlert,
    PlatformEscalation,
    PlatformLifecycle,
)

logger = logging.getLogger(__name__)

CENTRE = "centre"


@dataclass
class Policy:
    """The data the alert operations decide by."""

    catalogue_dir: str | None = None
    time_limit_scale: float = 1.0
    """Every time limit times this (``--escalation-scale``): below 1 only for a drill."""
    rules: Sequence[correlation.Rule] = field(default_factory=lambda: correlation.DEFAULT_RULES)

    @functools.cached_property
    def catalogue(self) -> Catalogue:
        return load_catalogue(self.catalogue_dir or default_catalogue_dir())


def drill_policy(scale: float) -> Policy:
    """The policy of a process run with ``--escalation-scale``; a drill is said at WARNING, as
    nobody must run a city on a drill's time limits by mistake."""
    if scale != 1:
        logger.warning("escalation drill: every alert time limit is x%g for alerts opened from "
                       "now on (--escalation-scale); restart without it to end the drill", scale)  # fmt: skip
    return Policy(time_limit_scale=scale)


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
    return PlatformLifecycle.model_validate(dict(
        alert_id=alert.alert_id, incident_id=ops.incident_id, incident_new=new_incident,
        action="open" if t is None else t.action.value, stage=ops.stage,
        actor=CENTRE if t is None else t.actor, note="" if t is None else t.note,
        override=t is not None and t.override, sensor="" if t is None else t.sensor,
        gateway=alert.gateway_id, device=alert.device_id.partition(":")[2],
        category=alert.category, severity=alert.severity,
        location=_stored_location(alert), due_at=ops.due_at,
        time_limit_min=ops.time_limit_min, ts=at,
    ))  # fmt: skip


def _record(s: AsyncSession, alert: Alert, ops: AlertOps, t: Transition) -> None:
    ops.stage = t.after.value
    who = {Action.ACK: "acked", Action.RESOLVE: "resolved", Action.CLOSE: "closed"}.get(t.action)
    if who:
        setattr(ops, f"{who}_by", t.actor)
        setattr(ops, f"{who}_at", t.at)
    s.add(AlertAction(alert_id=alert.alert_id, action=t.action.value, before=t.before.value,
                      after=t.after.value, actor=t.actor, note=t.note, at=t.at,
                      override=t.override, sensor=t.sensor))  # fmt: skip
    msg = _lifecycle_msg(alert, ops, t, t.at)
    s.add(_event("lifecycle", alert, msg.model_dump(mode="json"), t.at))


class AlertOperations:
    def __init__(self, policy: Policy | None = None) -> None:
        self.policy = policy or Policy()
        self.on_feed: list[Callable[[], None]] = []
        """Called after a transaction appended to the feed (wakes this process's readers)."""

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
            s.add(_event("alert", alert, PlatformAlert.from_event(ev).model_dump(mode="json"), now))
            fed = True
            ops = await s.get(AlertOps, ev.alert_id)
            if ops is None:
                ops = await self._open(s, alert, now)
            if ev.state is AlertState.CLEARED:
                t = lifecycle.device_cleared(Stage(ops.stage), ev.ts)
                if t is not None:
                    _record(s, alert, ops, t)
            await s.flush()
        return fed

    async def _open(self, s: AsyncSession, alert: Alert, now: int) -> AlertOps:
        cat = self.policy.catalogue
        limit = lifecycle.time_limit_ms(cat, alert.category, alert.district)
        due = lifecycle.due_at(cat, alert.category, alert.district, alert.raised_at,
                               self.policy.time_limit_scale)  # fmt: skip
        joined = await self._incident(s, alert)
        ops = AlertOps(
            alert_id=alert.alert_id, stage=Stage.OPEN.value,
            incident_id=joined or f"inc-{uuid.uuid4().hex[:12]}", due_at=due,
            time_limit_min=None if limit is None else limit // 60_000,
        )  # fmt: skip
        s.add(ops)
        msg = _lifecycle_msg(alert, ops, None, now, new_incident=joined is None)
        s.add(_event("lifecycle", alert, msg.model_dump(mode="json"), now))
        return ops

    async def _incident(self, s: AsyncSession, alert: Alert) -> str | None:
        rules = self.policy.rules
        since = alert.raised_at - correlation.lookback_ms(rules)
        q = (
            select(Alert, AlertOps.incident_id, AlertOps.stage)
            .join(AlertOps, AlertOps.alert_id == Alert.alert_id)
            .where(Alert.raised_at >= since, Alert.category == alert.category)
        )
        recent = [_candidate(a, inc, stage) for a, inc, stage in await s.execute(q)]
        return correlation.incident_for(_candidate(alert, None, "open"), recent, rules)

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

    # ---- operators and the clock --------------------------------------------------------------

    async def act(
        self, s: AsyncSession, alert_id: str, action: Action, actor: str, note: str, now: int,
        override: bool = False,
    ) -> Transition | None:  # fmt: skip
        """None when there is no such alert; ``lifecycle.Refused`` when the stage or the sensor
        forbids it, ``lifecycle.NoteRequired`` for an override without a reason."""
        alert = await s.get(Alert, alert_id)
        ops = await s.get(AlertOps, alert_id)
        if alert is None or ops is None:
            return None
        active = lifecycle.still_reported(alert.state, alert.message, alert.point, alert.value,
                                          alert.unit, alert.threshold)  # fmt: skip
        gone = await _sensor_gone(s, alert, now) if active is not None else None
        t = lifecycle.step(Stage(ops.stage), action, actor, now, note, active, gone, override)
        # two operators (or two registry processes) acting on one alert at once: only the one
        # whose conditional update finds the stage it decided from moves it; on PostgreSQL the
        # other waits for it, then matches nothing and is refused by the stage it now sees
        claim = await s.execute(
            update(AlertOps)
            .where(AlertOps.alert_id == alert_id, AlertOps.stage == t.before.value)
            .values(stage=t.after.value)
            .execution_options(synchronize_session=False)
        )
        if not getattr(claim, "rowcount", 0):
            await s.refresh(ops)
            raise lifecycle.Refused(Stage(ops.stage), action)
        _record(s, alert, ops, t)
        return t

    async def escalate(self, s: AsyncSession, now: int) -> list[str]:
        """Escalate every alert past its time limit that was not escalated yet."""
        waiting = [st.value for st in lifecycle.WAITING]
        q = (
            select(AlertOps, Alert)
            .join(Alert, Alert.alert_id == AlertOps.alert_id)
            .where(AlertOps.stage.in_(waiting), AlertOps.due_at < now,
                   AlertOps.escalated_at.is_(None))
        )  # fmt: skip
        done = []
        for ops, alert in await s.execute(q):
            if not lifecycle.needs_escalation(Stage(ops.stage), ops.due_at, ops.escalated_at, now):
                continue
            # several registry processes run this clock: only the one whose conditional update
            # takes the row escalates (on PostgreSQL the others wait for it, then match nothing)
            claim = await s.execute(
                update(AlertOps)
                .where(AlertOps.alert_id == ops.alert_id, AlertOps.escalated_at.is_(None))
                .values(escalated_at=now)
                .execution_options(synchronize_session=False)
            )
            if not getattr(claim, "rowcount", 0):
                continue
            msg = self._escalation(alert, ops, now)
            s.add(_event("escalation", alert, msg.model_dump(mode="json"), now))
            done.append(alert.alert_id)
        return done

    def _escalation(self, alert: Alert, ops: AlertOps, now: int) -> PlatformEscalation:
        entry = self.policy.catalogue.lookup(alert.category, alert.district)
        assert ops.due_at is not None and ops.time_limit_min is not None
        return PlatformEscalation.model_validate(dict(
            alert_id=alert.alert_id, incident_id=ops.incident_id, stage=ops.stage,
            gateway=alert.gateway_id, device=alert.device_id.partition(":")[2],
            category=alert.category, severity=alert.severity,
            location=_stored_location(alert),
            unit=entry.department.zh if entry else "", due_at=ops.due_at,
            time_limit_min=ops.time_limit_min, overdue_ms=now - ops.due_at, ts=now,
        ))  # fmt: skip


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
        waiting=Stage(stage) in lifecycle.WAITING,
    )  # fmt: skip
