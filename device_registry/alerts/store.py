"""Reads and writes of alerts and their cases for the API and the delivery tasks, on the registry
store.

Thin: SQL in, views out; the decisions are ``lifecycle``'s and ``operations``'s. Every method opens
its own transaction through ``RegistryStore.transaction`` (errors become ``StoreUnavailable``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from device_registry.alerts import lifecycle
from device_registry.alerts.lifecycle import Action, Refused, Stage
from device_registry.alerts.operations import Unroutable, department_of
from device_registry.alerts.views import (
    ActionView,
    AlertOpsView,
    BulkClosed,
    DeadLetterView,
    DepartmentView,
    IncidentActed,
    NameView,
    SkippedAlert,
    WebhookRequest,
    WebhookView,
)
from device_registry.alerts.views import alert as alert_view
from device_registry.db.pages import like
from device_registry.db.store import RegistryStore
from device_registry.db.tables import (
    Alert,
    AlertAction,
    AlertOps,
    DeadLetter,
    Device,
    DeviceInfo,
    FeedCursor,
    PlatformEvent,
    Webhook,
)
from device_registry.errors import NotFound
from device_registry.http.auth import Principal, audit_row
from device_registry.inventory.configgen import Profiles
from gridwatch.ground.catalogue import Category
from gridwatch.ground.profiles import point_decimals


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One message of the delivery feed, as every channel sends it."""

    seq: int
    kind: str
    district: str
    category: str
    severity: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class AlertFilter:
    stages: frozenset[str] = frozenset(s.value for s in Stage if s is not Stage.CLOSED)
    district: str | None = None
    category: str | None = None
    incident: str | None = None
    limit: int = 1000
    severity: str | None = None
    grid: str | None = None
    q: str | None = None
    """Part of the alert's id or its device's registry id, any case."""


def ops_view(
    a: Alert, ops: AlertOps, now: int, entry: Category | None = None,
    notes: dict[str, str] | None = None, decimals: int | None = None,
    notes_zh: dict[str, str] | None = None,
) -> AlertOpsView:  # fmt: skip
    """``entry``: the alert's catalogue category in its district; ``notes``: the latest note of
    each action taken on it; ``decimals``: its point's, from the device's profile."""
    stage = Stage(ops.stage)
    department = ops.department or department_of(entry)
    return AlertOpsView(
        **alert_view(a).model_dump(), stage=stage.value, stage_zh=stage.zh,
        incident_id=ops.incident_id, class_code=lifecycle.class_code(a.category),
        component_id=ops.component_id,
        department=DepartmentView(**department) if department else None,
        area_class=ops.area_class, due_at=ops.due_at, time_limit_min=ops.time_limit_min,
        time_left_ms=lifecycle.time_left_ms(stage, ops.due_at, now),
        overdue=lifecycle.is_overdue(stage, ops.due_at, now), urged=bool(ops.urge_count),
        urge_count=ops.urge_count or 0, urged_at=ops.urged_at,
        dispatch_count=ops.dispatch_count or 0, filed_by=ops.filed_by, filed_at=ops.filed_at,
        dispatched_by=ops.dispatched_by, dispatched_at=ops.dispatched_at,
        disposed_by=ops.disposed_by, disposed_at=ops.disposed_at,
        verified_by=ops.verified_by, verified_at=ops.verified_at, closed_by=ops.closed_by,
        closed_at=ops.closed_at,
        category_name=NameView(zh=entry.name.zh, en=entry.name.en) if entry else None,
        notes=notes or {}, notes_zh=notes_zh or {}, decimals=decimals,
    )  # fmt: skip


def _webhook(w: Webhook) -> WebhookView:
    return WebhookView(id=w.id, url=w.url, district=w.district, category=w.category,
                       created_at=w.created_at, created_by=w.created_by, active=w.active,
                       cursor=w.cursor)  # fmt: skip


class OpsStore:
    def __init__(
        self, store: RegistryStore, profiles: Callable[[], Profiles] | None = None
    ) -> None:
        self.store = store
        self.ops = store.ops
        self.profiles = profiles
        """The registry's device profiles (how each point is shown); None: not known here."""

    # ---- alerts -------------------------------------------------------------------------------

    async def alerts(self, f: AlertFilter, now: int) -> list[AlertOpsView]:
        return (await self.alert_page(f, now, count=False))[0]

    async def alert_page(
        self, f: AlertFilter, now: int, after: tuple[int, str] | None = None,
        total: int | None = None, count: bool = True,
    ) -> tuple[list[AlertOpsView], int, tuple[int, str] | None]:  # fmt: skip
        """The alerts ``f`` picks, newest raised first, after the one ``after`` names (its
        raised_at and id), at most ``f.limit``; how many match (``total`` as given, else counted
        when ``count``); and the key to go on after, None on the last page."""
        where: list[ColumnElement[bool]] = [AlertOps.stage.in_(sorted(f.stages))]
        for column, value in ((Alert.district, f.district), (Alert.category, f.category),
                              (AlertOps.incident_id, f.incident), (Alert.severity, f.severity),
                              (Alert.grid, f.grid)):  # fmt: skip
            if value is not None:
                where.append(column == value)
        if f.q:
            pattern = like(f.q)
            where.append(or_(Alert.alert_id.ilike(pattern, escape="\\"),
                             Alert.device_id.ilike(pattern, escape="\\")))  # fmt: skip
        joined = select(Alert, AlertOps).join(AlertOps, AlertOps.alert_id == Alert.alert_id)
        q = joined.where(*where).order_by(Alert.raised_at.desc(), Alert.alert_id.desc())
        if after is not None:
            raised, alert_id = after
            q = q.where(or_(Alert.raised_at < raised,
                            and_(Alert.raised_at == raised, Alert.alert_id < alert_id)))  # fmt: skip
        async with self.store.transaction() as s:
            rows = list(await s.execute(q.limit(f.limit + 1)))
            more = len(rows) > f.limit
            rows = rows[: f.limit]
            if total is None and count:
                counted = (
                    select(func.count())
                    .select_from(Alert)
                    .join(AlertOps, AlertOps.alert_id == Alert.alert_id)
                )
                total = int(await s.scalar(counted.where(*where)) or 0)
            views = await self._views(s, rows, now)
        last = (rows[-1][0].raised_at, rows[-1][0].alert_id) if more else None
        return views, len(views) if total is None else total, last

    async def _views(
        self, s: AsyncSession, rows: Sequence[tuple[Alert, AlertOps]], now: int
    ) -> list[AlertOpsView]:
        """The views of these alerts, with their notes and their points' decimals."""
        notes, notes_zh = await _notes(s, [a.alert_id for a, _ in rows])
        kinds = await _profile_ids(s, [a.device_id for a, _ in rows]) if self.profiles else {}
        known = self.profiles() if self.profiles else {}
        out = []
        for a, o in rows:
            profile = known.get(kinds.get(a.device_id, ""))
            point = profile.points.get(a.point) if profile else None
            entry = self.ops.policy.catalogue.lookup(a.category, a.district)
            decimals = point_decimals(point) if point is not None else None
            out.append(ops_view(a, o, now, entry, notes.get(a.alert_id), decimals,
                                notes_zh.get(a.alert_id)))  # fmt: skip
        return out

    async def alert(self, alert_id: str, now: int) -> tuple[AlertOpsView, list[ActionView]]:
        async with self.store.transaction() as s:
            a, o = await s.get(Alert, alert_id), await s.get(AlertOps, alert_id)
            if a is None or o is None:
                raise NotFound("alert", alert_id)
            rows = await s.scalars(
                select(AlertAction).where(AlertAction.alert_id == alert_id).order_by(AlertAction.id)
            )
            steps = [ActionView(action=r.action, before=r.before, after=r.after, actor=r.actor,
                                note=r.note, note_zh=r.note_zh, at=r.at, override=r.override,
                                sensor=r.sensor)
                     for r in rows]  # fmt: skip
            [view] = await self._views(s, [(a, o)], now)
            return view, steps

    async def act(
        self, alert_id: str, action: Action, actor: str, note: str, now: int,
        override: bool = False, by: Principal | None = None,
        department: dict[str, str] | None = None,
    ) -> AlertOpsView:  # fmt: skip
        """Raises ``NotFound``, ``lifecycle.Refused``, ``lifecycle.NoteRequired`` or
        ``Unroutable``. A step against the sensor (an override, or a sensor gone) is written to
        the audit log as ``by`` in the same transaction."""
        async with self.store.transaction() as s:
            t = await self.ops.act(s, alert_id, action, actor, note, now, override, department)
            if t is None:
                raise NotFound("alert", alert_id)
            if t.sensor and by is not None:
                detail = {"override": t.override, "sensor": t.sensor, "note": note}
                s.add(audit_row(by, f"alerts.{action.value}", alert_id, detail))
            a, o = await s.get(Alert, alert_id), await s.get(AlertOps, alert_id)
            assert a is not None and o is not None
            [view] = await self._views(s, [(a, o)], now)
        self.ops.fed()
        return view

    async def act_on_incident(
        self, incident_id: str, action: Action, actor: str, note: str, now: int
    ) -> IncidentActed:
        """The action on every alert of the incident whose stage allows it, in one transaction;
        the others are listed with the reason. Raises ``NotFound`` for an unknown incident,
        ``lifecycle.NoteRequired`` for an action that needs a note without one."""
        out = IncidentActed(incident_id=incident_id)
        moved: list[tuple[Alert, AlertOps]] = []
        async with self.store.transaction() as s:
            ids = list(await s.scalars(
                select(AlertOps.alert_id).where(AlertOps.incident_id == incident_id)
                .order_by(AlertOps.alert_id)
            ))  # fmt: skip
            if not ids:
                raise NotFound("incident", incident_id)
            for alert_id in ids:
                try:
                    await self.ops.act(s, alert_id, action, actor, note, now)
                except Refused as exc:
                    out.skipped.append(
                        SkippedAlert(alert_id=alert_id, stage=exc.stage.value, reason=str(exc))
                    )
                    continue
                except Unroutable as exc:
                    out.skipped.append(SkippedAlert(alert_id=alert_id, stage=Stage.FILED.value,
                                                    reason=str(exc)))  # fmt: skip
                    continue
                a, o = await s.get(Alert, alert_id), await s.get(AlertOps, alert_id)
                assert a is not None and o is not None
                moved.append((a, o))
            out.applied = await self._views(s, moved, now)
        if out.applied:
            self.ops.fed()
        return out

    async def close_many(
        self, alert_ids: Sequence[str], by: Principal, note: str, now: int
    ) -> BulkClosed:
        """Close each of these alerts whose stage and sensor allow it (reported and cleared by
        the device, never filed; or verified), in one transaction, with one audit entry; the
        others are listed with the reason (an unknown id among them)."""
        out = BulkClosed()
        async with self.store.transaction() as s:
            for alert_id in dict.fromkeys(alert_ids):  # once each, in the order given
                try:
                    t = await self.ops.act(s, alert_id, Action.CLOSE, by.name, note, now)
                except Refused as exc:
                    out.skipped.append(
                        SkippedAlert(alert_id=alert_id, stage=exc.stage.value, reason=str(exc))
                    )
                    continue
                if t is None:
                    out.skipped.append(SkippedAlert(alert_id=alert_id, stage="",
                                                    reason="no such alert"))  # fmt: skip
                    continue
                out.closed.append(alert_id)
            detail = {"closed": out.closed, "skipped": len(out.skipped), "note": note}
            s.add(audit_row(by, "alerts.close", f"alerts:{len(out.closed)}", detail))
        if out.closed:
            self.ops.fed()
        return out

    async def tick(self, now: int) -> list[tuple[str, str]]:
        """The clock's round (``AlertOperations.tick``): filing, sensor verification and
        urging; (alert id, step) of each step taken."""
        async with self.store.transaction() as s:
            done = await self.ops.tick(s, now)
        if done:
            self.ops.fed()
        return done

    # ---- the feed -----------------------------------------------------------------------------

    async def feed(self, after: int, limit: int = 500) -> list[FeedEvent]:
        q = (
            select(PlatformEvent)
            .where(PlatformEvent.seq > after)
            .order_by(PlatformEvent.seq)
            .limit(limit)
        )
        async with self.store.transaction() as s:
            return [_feed_event(e) for e in await s.scalars(q)]

    async def feed_event(self, seq: int) -> FeedEvent | None:
        async with self.store.transaction() as s:
            e = await s.get(PlatformEvent, seq)
            return None if e is None else _feed_event(e)

    async def last_seq(self) -> int:
        async with self.store.transaction() as s:
            return int(await s.scalar(select(func.max(PlatformEvent.seq))) or 0)

    async def prune_feed(self, before: int) -> int:
        """Forget feed events older than ``before`` (epoch ms), except those a pending dead
        letter still needs for its replay."""
        pending = select(DeadLetter.seq).where(DeadLetter.replayed_at.is_(None))
        async with self.store.transaction() as s:
            gone = await s.execute(
                delete(PlatformEvent).where(PlatformEvent.at < before,
                                            PlatformEvent.seq.not_in(pending))
            )  # fmt: skip
        count: int = getattr(gone, "rowcount", 0) or 0
        return count

    async def cursor(self, name: str) -> int | None:
        async with self.store.transaction() as s:
            row = await s.get(FeedCursor, name)
            return None if row is None else row.seq

    async def set_cursor(self, name: str, seq: int) -> None:
        async with self.store.transaction() as s:
            row = await s.get(FeedCursor, name)
            if row is None:
                s.add(FeedCursor(name=name, seq=seq))
            else:
                row.seq = seq

    # ---- webhooks -----------------------------------------------------------------------------

    async def add_webhook(self, req: WebhookRequest, by: str, now: int) -> WebhookView:
        """A new subscription starts at the end of the feed: it gets what happens from now on."""
        start = await self.last_seq()
        row = Webhook(url=req.url, secret=req.secret, district=req.district,
                      category=req.category, created_at=now, created_by=by, cursor=start)  # fmt: skip
        async with self.store.transaction() as s:
            s.add(row)
            await s.flush()
            return _webhook(row)

    async def webhooks(self, active_only: bool = False) -> list[Webhook]:
        q = select(Webhook).order_by(Webhook.id)
        if active_only:
            q = q.where(Webhook.active.is_(True))
        async with self.store.transaction() as s:
            return list(await s.scalars(q))

    async def webhook_views(self) -> list[WebhookView]:
        return [_webhook(w) for w in await self.webhooks()]

    async def delete_webhook(self, webhook_id: int) -> None:
        async with self.store.transaction() as s:
            row = await s.get(Webhook, webhook_id)
            if row is None:
                raise NotFound("webhook", str(webhook_id))
            await s.delete(row)
            await s.execute(delete(DeadLetter).where(DeadLetter.webhook_id == webhook_id))

    async def advance(self, webhook_id: int, seq: int) -> None:
        async with self.store.transaction() as s:
            row = await s.get(Webhook, webhook_id)
            if row is not None and seq > row.cursor:
                row.cursor = seq

    async def dead_letter(
        self, webhook_id: int, seq: int, attempts: int, error: str, now: int
    ) -> None:
        """Record a message given up on and move the cursor past it, in one transaction."""
        async with self.store.transaction() as s:
            s.add(DeadLetter(webhook_id=webhook_id, seq=seq, attempts=attempts,
                             last_error=error[:2000], failed_at=now))  # fmt: skip
            row = await s.get(Webhook, webhook_id)
            if row is not None and seq > row.cursor:
                row.cursor = seq

    async def dead_letters(
        self, webhook_id: int | None = None, pending_only: bool = True
    ) -> list[DeadLetterView]:
        q = (
            select(DeadLetter, PlatformEvent.payload)
            .join(PlatformEvent, PlatformEvent.seq == DeadLetter.seq)
            .order_by(DeadLetter.id)
        )
        if webhook_id is not None:
            q = q.where(DeadLetter.webhook_id == webhook_id)
        if pending_only:
            q = q.where(DeadLetter.replayed_at.is_(None))
        async with self.store.transaction() as s:
            return [_dead(d, payload) for d, payload in await s.execute(q)]

    async def dead_letter_row(self, dead_id: int) -> tuple[DeadLetter, Webhook, FeedEvent]:
        async with self.store.transaction() as s:
            d = await s.get(DeadLetter, dead_id)
            w = None if d is None else await s.get(Webhook, d.webhook_id)
            e = None if d is None else await s.get(PlatformEvent, d.seq)
            if d is None or w is None or e is None:
                raise NotFound("dead letter", str(dead_id))
            return d, w, _feed_event(e)

    async def replayed(self, dead_id: int, now: int, error: str | None) -> None:
        async with self.store.transaction() as s:
            d = await s.get(DeadLetter, dead_id)
            if d is None:
                return
            d.attempts += 1
            if error is None:
                d.replayed_at = now
            else:
                d.last_error = error[:2000]


async def _notes(
    s: AsyncSession, alert_ids: Sequence[str]
) -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """alert id -> action -> the note of its latest such action, for the notes people gave;
    and the same for the Chinese of the centre's own notes (``note_zh``)."""
    out: dict[str, dict[str, str]] = {}
    out_zh: dict[str, dict[str, str]] = {}
    for i in range(0, len(alert_ids), 500):  # a bounded number of parameters per statement
        q = (
            select(AlertAction.alert_id, AlertAction.action, AlertAction.note, AlertAction.note_zh)
            .where(AlertAction.alert_id.in_(alert_ids[i : i + 500]), AlertAction.note != "")
            .order_by(AlertAction.id)
        )
        for alert_id, action, note, note_zh in await s.execute(q):
            out.setdefault(alert_id, {})[action] = note
            zh = out_zh.setdefault(alert_id, {})
            zh.pop(action, None)  # a later person's note has no Chinese of its own
            if note_zh:
                zh[action] = note_zh
    return out, out_zh


async def _profile_ids(s: AsyncSession, device_ids: Sequence[str]) -> dict[str, str]:
    """device id -> its profile: the installer's if registered, else what its gateway said."""
    out: dict[str, str] = {}
    wanted = list(dict.fromkeys(device_ids))
    for i in range(0, len(wanted), 500):  # a bounded number of parameters per statement
        chunk = wanted[i : i + 500]
        said = select(DeviceInfo.device_id, DeviceInfo.profile).where(
            DeviceInfo.device_id.in_(chunk)
        )
        out.update({d: p for d, p in await s.execute(said) if p})
        registered = select(Device.id, Device.profile).where(
            Device.id.in_(chunk), Device.profile.is_not(None)
        )
        out.update({d: p for d, p in await s.execute(registered) if p})
    return out


def _feed_event(e: PlatformEvent) -> FeedEvent:
    return FeedEvent(e.seq, e.kind, e.district, e.category, e.severity, e.payload)


def _dead(d: DeadLetter, payload: dict[str, Any]) -> DeadLetterView:
    return DeadLetterView(id=d.id, webhook_id=d.webhook_id, seq=d.seq, attempts=d.attempts,
                          last_error=d.last_error, failed_at=d.failed_at,
                          replayed_at=d.replayed_at, message=payload)  # fmt: skip


def matches(event: FeedEvent, district: str | None, category: str | None) -> bool:
    """A subscription's filter: none set means everything."""
    return (district is None or event.district == district) and (
        category is None or event.category == category
    )


def stages(names: Sequence[str]) -> frozenset[str]:
    return frozenset(Stage(n).value for n in names)
