"""The bridge's pure core: a batch of MQTT messages -> what to write, publish and count.

No I/O and no clock: the shell passes the receive time and the set of message ids the store has
already seen. Two steps, because dedupe needs a store lookup in between:
``decode`` (validate every message) and ``plan`` (drop duplicates, track sequences, build the
registry changes, the telemetry to write and the platform alerts to publish).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cloud_bridge.decode import Cleared, Message, Reason, Rejection, decode
from cloud_bridge.sequence import GapTracker, Seq
from device_registry import Changes, QuarantineEntry, Seen
from gridwatch.ground.contract import (
    AlertEvent,
    Birth,
    Death,
    GatewayHealth,
    PlatformAlert,
    Quality,
    TelemetryBatch,
    Topics,
)

logger = logging.getLogger(__name__)

_QUARANTINE_PAYLOAD_MAX = 64 * 1024
_LOGGED_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Raw:
    topic: str
    payload: bytes


@dataclass
class Stats:
    received: int = 0
    ingested: collections.Counter[str] = field(default_factory=collections.Counter)
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    duplicates: int = 0
    gaps: int = 0
    missing: int = 0
    """Messages the sequence numbers say never arrived."""
    replays: int = 0
    readings: int = 0
    alerts_published: int = 0
    points_written: int = 0
    points_skipped: int = 0
    """Readings without a numeric value (failed reads, strings): registry only."""
    write_failures: int = 0
    """Sink or registry writes that failed and were retried."""

    @classmethod
    def total(cls, parts: Iterable[Stats]) -> Stats:
        """The sum of several counters (the bridge keeps one per MQTT session)."""
        out = cls()
        for p in parts:
            for f in dataclasses.fields(cls):
                setattr(out, f.name, getattr(out, f.name) + getattr(p, f.name))
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "received": self.received, "ingested": dict(self.ingested),
            "rejected": dict(self.rejected), "duplicates": self.duplicates, "gaps": self.gaps,
            "missing": self.missing, "replays": self.replays, "readings": self.readings,
            "alerts_published": self.alerts_published, "points_written": self.points_written,
            "points_skipped": self.points_skipped, "write_failures": self.write_failures,
        }  # fmt: skip


@dataclass
class Decoded:
    now: int
    messages: list[Message] = field(default_factory=list)
    rejected: list[tuple[Raw, Rejection]] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [m.id for m in self.messages if not isinstance(m, Birth | Death)]


@dataclass
class Plan:
    changes: Changes
    telemetry: list[TelemetryBatch] = field(default_factory=list)
    platform: list[tuple[str, bytes]] = field(default_factory=list)
    """(topic, payload) of each PlatformAlert to publish at QoS 1."""


class IngestCore:
    def __init__(self, topics: Topics, track_gaps: bool = True) -> None:
        self.topics = topics
        self.stats = Stats()
        self._gaps = GapTracker() if track_gaps else None
        self._logged: set[tuple[str, Reason]] = set()

    def decode(self, raws: Iterable[Raw], now: int, into: Decoded | None = None) -> Decoded:
        """Validate each message; ``into`` lets the shell decode a batch in slices."""
        out = Decoded(now) if into is None else into
        for raw in raws:
            self.stats.received += 1
            result = decode(self.topics, raw.topic, raw.payload)
            if isinstance(result, Rejection):
                self._reject(raw, result)
                out.rejected.append((raw, result))
            elif not isinstance(result, Cleared):
                out.messages.append(result)
        return out

    def _reject(self, raw: Raw, why: Rejection) -> None:
        self.stats.rejected[why.reason] += 1
        # once per topic and reason at WARNING: a gateway stuck on a bad firmware floods the log
        level = logging.DEBUG if (raw.topic, why.reason) in self._logged else logging.WARNING
        if len(self._logged) >= _LOGGED_MAX:  # garbage on ever new topics must not grow memory
            self._logged.clear()
        self._logged.add((raw.topic, why.reason))
        logger.log(level, "quarantined a message on %s: %s: %s", raw.topic, why.reason, why.detail)

    def plan(self, decoded: Decoded, seen: set[str]) -> Plan:
        plan = self.start_plan(decoded)
        self.extend_plan(plan, decoded.messages, seen)
        return plan

    def start_plan(self, decoded: Decoded) -> Plan:
        """A plan with the batch's refused messages; ``extend_plan`` adds the good ones."""
        ch = Changes(now=decoded.now)
        ch.quarantine = [
            QuarantineEntry(raw.topic, str(why.reason), why.detail,
                            raw.payload[:_QUARANTINE_PAYLOAD_MAX], decoded.now)
            for raw, why in decoded.rejected
        ]  # fmt: skip
        return Plan(ch)

    def extend_plan(self, plan: Plan, messages: Iterable[Message], seen: set[str]) -> None:
        """Drop duplicates (``seen``: ids the registry has), track sequences, add the rest."""
        ch = plan.changes
        for msg in messages:
            if isinstance(msg, Birth | Death):
                ch.status.append(msg)  # the store registers the devices a birth names
                self.stats.ingested[msg.kind] += 1
                continue
            if msg.id in seen or msg.id in ch.seen_ids:
                self.stats.duplicates += 1
                continue
            ch.seen_ids[msg.id] = Seen(msg.gateway, msg.kind, msg.session, msg.seq)
            self._track(msg)
            self.stats.ingested[msg.kind] += 1
            if isinstance(msg, TelemetryBatch):
                self._telemetry(ch, msg)
                plan.telemetry.append(msg)
            elif isinstance(msg, AlertEvent):
                ch.alerts.append(msg)
                ch.device_seen.setdefault((msg.gateway, msg.device), None)
                plan.platform.append(self._platform_alert(msg))
            else:
                self._health(ch, msg)

    def _track(self, msg: TelemetryBatch | AlertEvent | GatewayHealth) -> None:
        if self._gaps is None:
            return
        seen = self._gaps.observe(msg.gateway, msg.kind, msg.session, msg.seq)
        if seen.kind is Seq.GAP:
            self.stats.gaps += 1
            self.stats.missing += seen.missing
            logger.warning(
                "gateway %s %s stream skipped %d message(s) before seq %d (session %d)",
                msg.gateway, msg.kind, seen.missing, msg.seq, msg.session,
            )  # fmt: skip
        elif seen.kind is Seq.REPLAY:
            self.stats.replays += 1

    def _telemetry(self, ch: Changes, batch: TelemetryBatch) -> None:
        # the hot loop of the bridge (every reading passes here): locals, no allocations
        gw = batch.gateway
        latest, alive = ch.latest, ch.device_seen
        failed, stale = Quality.COMM_ERROR, Quality.STALE
        self.stats.readings += len(batch.readings)
        for r in batch.readings:
            key = (gw, r.device, r.point)
            old = latest.get(key)
            if old is None or r.ts >= old.ts:
                latest[key] = r
            dev = (gw, r.device)
            prev = alive.get(dev)
            # a failed read is the gateway's word that the device did not answer, a stale one that
            # a push device stopped sending (silent): neither is a sign of life
            q = r.quality
            if q is not failed and q is not stale:
                if prev is None or r.ts > prev:
                    alive[dev] = r.ts
            elif dev not in alive:
                alive[dev] = None

    def _health(self, ch: Changes, report: GatewayHealth) -> None:
        ch.health.append(report)
        for dev in report.devices:
            ch.device_seen.setdefault((report.gateway, dev.device), None)

    def _platform_alert(self, ev: AlertEvent) -> tuple[str, bytes]:
        topic = self.topics.platform_alert(ev.location.district, ev.category, ev.severity.value)
        return topic, PlatformAlert.from_event(ev).model_dump_json().encode()


def count_points(batches: Sequence[TelemetryBatch]) -> int:
    return sum(len(b.readings) for b in batches)
