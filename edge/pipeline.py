"""Driver outcomes -> rules -> outbox: the edge's hot path.

``Pipeline.sink`` is what every driver calls. It never waits on the network: samples are
buffered and written to the outbox as telemetry batches; alert transitions go to the outbox at
once, with the alert's persisted state, ahead of any telemetry backlog.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from drivers.base import PollOutcome
from edge.outbox import PRIO_ALERT, PRIO_TELEMETRY, ActiveAlert, Outbox
from edge.rules import DeviceRules, Transition
from gridwatch.contract import SCHEMA_VERSION, AlertEvent, AlertState, Topics, new_id
from gridwatch.gatewayconf import ResolvedDevice
from gridwatch.watch import Watch

logger = logging.getLogger(__name__)

Clock = Callable[[], float]  # seconds since the epoch


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
        self.buffer: list[dict[str, object]] = []
        self.readings_in = 0
        self.alerts_out = 0
        self.on_alert: Callable[[AlertEvent], None] | None = None
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
        for a in self.outbox.active_alerts():
            if a.device in self.rules:
                self.rules[a.device].restore(a.rule, a.peak)
                self.active[(a.device, a.rule)] = a
        if self.active:
            logger.info("restored %d active alerts from the outbox", len(self.active))

    # --- the drivers' sink -------------------------------------------------------------------
    def sink(self, outcome: PollOutcome) -> None:
        hist = not self.uplink_up
        buf = self.buffer
        for s in outcome.samples:
            buf.append(
                {"device": s.device, "point": s.point, "value": s.value, "unit": s.unit,
                 "ts": s.ts, "quality": s.quality.value, "historical": hist}
            )  # fmt: skip
        self.readings_in += len(outcome.samples)
        rules = self.rules.get(outcome.device)
        if rules is not None:
            for t in rules.feed(outcome):
                self._alert(t)
        if len(buf) >= self.batch_max:
            self.flush()

    def tick(self) -> None:
        now = self._now()
        for rules in self.rules.values():
            for t in rules.tick(now):
                self._alert(t)

    def flush(self) -> None:
        """Write the buffered readings to the outbox as telemetry batches."""
        if self.buffer:
            self.watch.changed()
        while self.buffer:
            chunk, self.buffer = self.buffer[: self.batch_max], self.buffer[self.batch_max :]
            self.outbox.enqueue(
                PRIO_TELEMETRY, "telemetry", self.topics.telemetry(self.gateway_id),
                lambda seq, c=chunk: self._batch(seq, c),  # type: ignore[misc]
            )  # fmt: skip

    def _batch(self, seq: int, readings: list[dict[str, object]]) -> bytes:
        # built by hand for speed; tests check it against the contract's TelemetryBatch
        msg = {
            "v": SCHEMA_VERSION, "kind": "telemetry", "id": new_id(), "gateway": self.gateway_id,
            "seq": seq, "session": self.session, "readings": readings,
        }  # fmt: skip
        return json.dumps(msg, separators=(",", ":")).encode()

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
                threshold=t.threshold, unit=unit, message=t.rule.message,
                raised_at=active.raised_at, ts=t.ts,
            )  # fmt: skip
            if self.on_alert is not None:
                self.on_alert(ev)
            return ev.model_dump_json().encode()

        cleared = key if t.state is AlertState.CLEARED else None
        self.outbox.enqueue(
            PRIO_ALERT, "alert", self.topics.alert(self.gateway_id), build,
            alert=None if cleared else active, cleared=cleared,
        )  # fmt: skip
        if cleared:
            self.active.pop(key, None)
        else:
            self.active[key] = active
        self.alerts_out += 1
        self.watch.changed()
        logger.info("alert %s %s (%s %s=%s)", t.state.value, active.alert_id, t.rule.category,
                    t.point or t.rule.kind, t.value)  # fmt: skip
