"""Driver outcomes -> rules -> outbox: the edge's hot path.

``Pipeline.sink`` is what every driver calls. It never waits on the network. Each poll's
readings are serialised once and appended to the outbox's poll journal before anything else
happens, so a gateway killed a moment later still has them; the batcher then turns the staged
polls into numbered telemetry batches. Alert transitions go to the outbox at once, with the
alert's persisted state, ahead of any telemetry backlog.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from drivers.base import PollOutcome
from edge.journal import Staged
from edge.outbox import PRIO_ALERT, PRIO_TELEMETRY, ActiveAlert, Outbox
from edge.rules import DeviceRules, Transition, message_for
from gridwatch.ground.contract import SCHEMA_VERSION, AlertEvent, AlertState, Topics, new_id
from gridwatch.ground.gatewayconf import ResolvedDevice
from gridwatch.ground.watch import Watch

logger = logging.getLogger(__name__)

MEMORY_ONLY_MAX = 100_000
"""Readings held in memory when the journal cannot be written (a full disk): about 10 MB."""

Clock = Callable[[], float]  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class _QueuedAlert:
    build: Callable[[int], bytes]
    active: ActiveAlert | None  # the alert's state to persist with it (None: cleared)
    cleared: tuple[str, str] | None


class Pipeline:
    def __init__(
        self,
        gateway_id: str,
        devices: list[ResolvedDevice],
        outbox: Outbox,
        topics: Topics,
        clock: Clock,
        batch_max: int = 500,
    ) -> None:
        self.gateway_id = gateway_id
        self.outbox = outbox
        self.topics = topics
        self.clock = clock
        self.batch_max = batch_max
        self.session = 0
        self.uplink_up = False  # readings taken while the uplink is down are historical
        self.devices = {d.id: d for d in devices}
        now = self._now()
        self.rules = {d.id: DeviceRules(d.id, d.rules, d.interval_s, now) for d in devices}
        self.active: dict[tuple[str, str], ActiveAlert] = {}
        self.buffer: list[Staged] = []  # polls staged in the outbox, not yet in a batch
        self.buffered = 0  # readings in ``buffer``
        self.stage_failures = 0
        self.dropped_readings = 0  # memory-only polls dropped past MEMORY_ONLY_MAX
        self.readings_in = 0
        self.alerts_out = 0
        # alert transitions the outbox could not take yet (a full disk), retried in order
        self.unqueued_alerts: list[_QueuedAlert] = []
        self.watch = Watch()  # changes when batches or alerts are queued
        self._restore()

    def reconfigure(self, devices: list[ResolvedDevice]) -> None:
        """New devices and rules; alerts of rules that still exist stay active, others clear."""
        self.flush()
        now = self._now()
        new = {d.id: d for d in devices}
        for device, rule_id in list(self.active):
            if device in new and any(r.id == rule_id for r in new[device].rules):
                continue
            # the rule is gone: clear its alert (while the old device is still known for its
            # location) rather than leave it open forever
            gone = next(r for r in self.devices[device].rules if r.id == rule_id)
            peak = self.active[(device, rule_id)].peak
            point = getattr(gone, "point", "")
            self._alert(Transition(gone, device, point, AlertState.CLEARED, None, peak, None, now))
        self.devices = new
        self.rules = {d.id: DeviceRules(d.id, d.rules, d.interval_s, now) for d in devices}
        for (device, rule_id), a in self.active.items():
            self.rules[device].restore(rule_id, a.peak)

    def _now(self) -> int:
        return int(self.clock() * 1000)

    def _restore(self) -> None:
        for poll in self.outbox.take_staged():  # taken before a kill: they go out late, as history
            rows = orjson.loads(b"[" + poll.payload + b"]")
            for r in rows:
                r["historical"] = True
            self.buffer.append(Staged(poll.id, poll.readings, orjson.dumps(rows)[1:-1]))
            self.buffered += poll.readings
        if self.buffer:
            logger.info("recovered %d staged readings from the outbox", self.buffered)
        for a in self.outbox.active_alerts():
            if a.device in self.rules:
                self.rules[a.device].restore(a.rule, a.peak)
                self.active[(a.device, a.rule)] = a
        if self.active:
            logger.info("restored %d active alerts from the outbox", len(self.active))

    # --- the drivers' sink -------------------------------------------------------------------
    def sink(self, outcome: PollOutcome) -> None:
        hist = not self.uplink_up
        rows = [
            {"device": s.device, "point": s.point, "value": s.value, "unit": s.unit,
             "ts": s.ts, "quality": s.quality.value, "historical": hist}
            for s in outcome.samples
        ]  # fmt: skip
        if rows:  # durable before the rules see them
            self.buffer.append(self._stage(orjson.dumps(rows)[1:-1], len(rows)))
            self.buffered += len(rows)
            self.readings_in += len(rows)
        rules = self.rules.get(outcome.device)
        if rules is not None:
            for t in rules.feed(outcome):
                self._alert(t)
        if self.buffered >= self.batch_max:
            self.flush(full_only=True)

    def _stage(self, payload: bytes, readings: int) -> Staged:
        try:
            return self.outbox.stage(payload, readings)
        except OSError as exc:  # disk full, file system gone read-only: keep them in memory
            self.stage_failures += 1
            self._bound_memory_only(readings)
            if self.stage_failures == 1 or self.stage_failures % 1000 == 0:
                logger.error("poll journal write failed (%d so far), readings held in memory "
                             "only (%d dropped, oldest first): %s", self.stage_failures,
                             self.dropped_readings, exc)  # fmt: skip
            return Staged(0, readings, payload)  # id 0: in no journal

    def _bound_memory_only(self, incoming: int) -> None:
        """Polls held only in memory (the journal cannot be written) are bounded like the
        outbox: past ``MEMORY_ONLY_MAX`` readings the oldest go, counted in ``dropped_readings``."""
        held = sum(p.readings for p in self.buffer if p.id == 0)
        while self.buffer and held + incoming > MEMORY_ONLY_MAX:
            oldest = next((i for i, p in enumerate(self.buffer) if p.id == 0), None)
            if oldest is None:
                return
            gone = self.buffer.pop(oldest)
            held -= gone.readings
            self.buffered -= gone.readings
            self.dropped_readings += gone.readings

    def queue_alerts(self) -> None:
        """Put waiting alert transitions into the outbox, oldest first. One the outbox cannot
        take (a full disk) waits, with those after it, for the next tick: the transition is
        known and its state kept in memory, so it is sent late rather than never."""
        while self.unqueued_alerts:
            a = self.unqueued_alerts[0]
            try:
                self.outbox.enqueue(
                    PRIO_ALERT, "alert", self.topics.alert(self.gateway_id), a.build,
                    alert=a.active, cleared=a.cleared,
                )  # fmt: skip
            except (sqlite3.Error, OSError) as exc:
                logger.error("%d alert transition(s) wait for the outbox: %s",
                             len(self.unqueued_alerts), exc)  # fmt: skip
                return
            self.unqueued_alerts.pop(0)

    def tick(self) -> None:
        self.queue_alerts()
        now = self._now()
        for rules in self.rules.values():
            for t in rules.tick(now):
                self._alert(t)

    def flush(self, full_only: bool = False) -> None:
        """Turn the staged polls into telemetry batches of up to ``batch_max`` readings (a poll
        is never split); each batch releases its polls from staging as it is queued.
        ``full_only`` keeps back the last polls that do not fill a batch yet."""
        polls = self.buffer
        topic = self.topics.telemetry(self.gateway_id)
        start = 0
        try:
            while start < len(polls):
                end, n = start + 1, polls[start].readings
                while end < len(polls) and n + polls[end].readings <= self.batch_max:
                    n += polls[end].readings
                    end += 1
                if full_only and end == len(polls) and n < self.batch_max:
                    break
                chunk = polls[start:end]
                self.outbox.enqueue(
                    PRIO_TELEMETRY, "telemetry", topic,
                    lambda seq, c=chunk: self._batch(seq, c),  # type: ignore[misc]
                    unstage_through=max(p.id for p in chunk),
                )  # fmt: skip
                self.buffered -= n
                start = end
        finally:  # what was queued leaves the buffer even if a later batch failed
            if start:
                self.buffer = polls[start:]
                self.watch.changed()

    def _batch(self, seq: int, polls: list[Staged]) -> bytes:
        # spliced from the polls' staged JSON; tests check it against the contract
        head = orjson.dumps({
            "v": SCHEMA_VERSION, "kind": "telemetry", "id": new_id(), "gateway": self.gateway_id,
            "seq": seq, "session": self.session,
        })  # fmt: skip
        return b"".join((head[:-1], b',"readings":[', b",".join(p.payload for p in polls), b"]}"))

    # --- alerts ----------------------------------------------------------------------------
    def _alert(self, t: Transition) -> None:
        key = (t.device, t.rule.id)
        dev = self.devices[t.device]
        if t.state is AlertState.RAISED:
            if key in self.active:
                return  # restored after a restart: already raised once
            active = ActiveAlert(
                t.device,
                t.rule.id,
                f"{self.gateway_id}:{t.device}:{t.rule.id}:{t.ts}",
                t.ts,
                t.peak,
            )
        else:
            prior = self.active.get(key)
            if prior is None:
                return  # nothing to update or clear
            active = ActiveAlert(t.device, t.rule.id, prior.alert_id, prior.raised_at, t.peak)
        unit = ""
        point = dev.profile.points.get(t.point) if t.point else None
        if point is not None:
            unit = point.unit

        def build(seq: int) -> bytes:
            ev = AlertEvent(
                id=new_id(), gateway=self.gateway_id, seq=seq, session=self.session,
                alert_id=active.alert_id, state=t.state, rule=t.rule.id,
                category=t.rule.category, severity=t.rule.severity, device=t.device,
                point=t.point, location=dev.location, value=t.value, peak=t.peak,
                threshold=t.threshold, unit=unit, message=message_for(t.rule, t.state),
                raised_at=active.raised_at, ts=t.ts,
            )  # fmt: skip
            return ev.model_dump_json().encode()

        cleared = key if t.state is AlertState.CLEARED else None
        self.unqueued_alerts.append(_QueuedAlert(build, None if cleared else active, cleared))
        self.queue_alerts()
        if cleared:
            self.active.pop(key, None)
        else:
            self.active[key] = active
        self.alerts_out += 1
        self.watch.changed()
        logger.info("alert %s %s (%s %s=%s)", t.state.value, active.alert_id, t.rule.category,
                    t.point or t.rule.kind, t.value)  # fmt: skip
