"""The bridge's pure core: a batch of MQTT messages -> what to write, publish and count.

No I/O and no clock: the shell passes the receive time and the set of message ids the store has
already seen. Two steps, because dedupe needs a store lookup in between:
``decode`` (validate every message) and ``plan`` (drop duplicates, track sequences, build the
registry changes, the telemetry to write and the platform alerts to publish).

Beyond the contract, the centre applies its own policy here:

- The clock window: a time more than ``ahead_ms`` after the centre's clock, or ``back_ms``
  before it, is refused, never clamped: a clamped time would be invented, and a reading dated in
  the future would pin its device's last value and last-seen until that date. A refused reading
  is dropped from its batch (the others are kept); a refused alert, health report or birth is
  quarantined whole. Both are counted in ``Stats.refused``.
- Alert scope: the registry keys an alert by the gateway whose topic it came through, never by
  the payload: ``scoped_alert_id``. A gateway cannot clear or update another gateway's alert.
- A gateway speaks for its own devices only (``DeviceFacts``, from the registry): readings and
  alerts about a device an installer registered under another gateway are refused (counted as
  ``foreign_device``), and an alert about a registered device is placed where the installer
  registered it, whatever location its payload names.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cloud_bridge.decode import Cleared, Message, Reason, Rejection, decode, delivery_key
from cloud_bridge.sequence import GapTracker, Seq
from device_registry import Changes, QuarantineEntry, Seen
from device_registry.ingest.changes import DeviceFacts
from gridwatch.ground.alertwords import platform_alert
from gridwatch.ground.contract import (
    AlertEvent,
    Birth,
    Death,
    GatewayHealth,
    Quality,
    Reading,
    TelemetryBatch,
    Topics,
)

logger = logging.getLogger(__name__)

_QUARANTINE_PAYLOAD_MAX = 64 * 1024
_QUARANTINE_TOPIC_MAX = 512  # the quarantine table's column: a longer MQTT topic is cut
_LOGGED_MAX = 10_000
ALERT_ID_MAX = 128
"""The registry's alert key, gateway prefix included (its column's width)."""


@dataclass(frozen=True, slots=True)
class ClockWindow:
    """How far a gateway's times may be from the centre's clock (see the module docstring)."""

    back_ms: int = 7 * 24 * 3600 * 1000
    """A week: an outbox (256 MB by default) replays days of readings after an outage; older
    than a week is more likely a gateway whose clock was never set."""
    ahead_ms: int = 5 * 60 * 1000
    """Five minutes: NTP-synced clocks differ by milliseconds; more is a wrong clock."""

    def refuses(self, ts: int, now: int) -> bool:
        return ts > now + self.ahead_ms or ts < now - self.back_ms


def scoped_alert_id(gateway: str, alert_id: str) -> str:
    """The registry's key of a gateway's alert: its id, prefixed with the gateway unless the
    edge already did (``gw:device:rule:ts``), so existing ids stay as they are. Gateway ids
    have no ':', so two gateways' keys never meet."""
    return alert_id if alert_id.startswith(f"{gateway}:") else f"{gateway}:{alert_id}"


@dataclass(frozen=True, slots=True)
class Raw:
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class PlatformOut:
    """A platform alert to publish at QoS 1, with the transition it tells of."""

    transition: str
    """``transition_key``: the same transition has the same key however often it is planned."""
    topic: str
    payload: bytes


def transition_key(gateway: str, message_id: str) -> str:
    """The key of one alert transition: its message id (the edge's dedupe key, kept across
    resends), under its gateway so that one gateway's ids never hide another's alerts."""
    return f"{gateway}/{message_id}"


@dataclass
class Stats:
    received: int = 0
    ingested: collections.Counter[str] = field(default_factory=collections.Counter)
    rejected: collections.Counter[str] = field(default_factory=collections.Counter)
    duplicates: int = 0
    gaps: int = 0
    missing: int = 0
    """Messages the sequence numbers say never arrived (less those that came later)."""
    repaired: int = 0
    """Messages counted missing that came later (the gateway answered a Repair)."""
    replays: int = 0
    readings: int = 0
    alerts_published: int = 0
    points_written: int = 0
    points_skipped: int = 0
    """Readings without a numeric value (failed reads, strings): registry only."""
    write_failures: int = 0
    """Sink or registry writes that failed and were retried."""
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    """Readings and messages the centre's policy refused, by reason (``clock``, ...)."""

    @classmethod
    def total(cls, parts: Iterable[Stats]) -> Stats:
        """The sum of several counters (the bridge keeps one per MQTT session)."""
        out = cls()
        for p in parts:
            for f in dataclasses.fields(cls):
                mine, theirs = getattr(out, f.name), getattr(p, f.name)
                if isinstance(mine, collections.Counter):
                    mine.update(theirs)  # not ``+``: that drops the negative corrections
                else:
                    setattr(out, f.name, mine + theirs)
        for f in dataclasses.fields(cls):
            counts = getattr(out, f.name)
            if isinstance(counts, collections.Counter):
                for key in [k for k, n in counts.items() if n == 0]:
                    del counts[key]
        return out

    def as_dict(self) -> dict[str, object]:
        return {
            "received": self.received, "ingested": dict(self.ingested),
            "rejected": dict(self.rejected), "duplicates": self.duplicates, "gaps": self.gaps,
            "missing": self.missing, "repaired": self.repaired, "replays": self.replays, "readings": self.readings,
            "alerts_published": self.alerts_published, "points_written": self.points_written,
            "points_skipped": self.points_skipped, "write_failures": self.write_failures,
            "refused": dict(self.refused),
        }  # fmt: skip


@dataclass
class Decoded:
    now: int
    messages: list[Message] = field(default_factory=list)
    rejected: list[tuple[Raw, Rejection]] = field(default_factory=list)

    def ids(self) -> list[str]:
        return [m.id for m in self.messages if not isinstance(m, Birth | Death)]

    def devices(self) -> set[tuple[str, str]]:
        """(gateway, device) of every device the batch names: to ask the registry about."""
        named: set[tuple[str, str]] = set()
        for m in self.messages:
            if isinstance(m, TelemetryBatch):
                named.update((m.gateway, r.device) for r in m.readings)
            elif isinstance(m, AlertEvent):
                named.add((m.gateway, m.device))
            elif isinstance(m, Birth):
                named.update((m.gateway, d) for d in m.devices)
        return named


@dataclass
class Plan:
    changes: Changes
    telemetry: list[TelemetryBatch] = field(default_factory=list)
    platform: list[PlatformOut] = field(default_factory=list)
    """Each PlatformAlert to publish at QoS 1."""
    accepted: list[Message] = field(default_factory=list)
    """The messages ``changes`` was built from, as planned (windowed, scoped): should the
    registry refuse the whole step, the shell finds the one it refuses (``changes_for``)."""
    delivered: list[tuple[str, str, int]] = field(default_factory=list)
    """(gateway, stream, seq) of every upstream message of the step: stored, duplicate or
    quarantined, all dealt with once the step commits (``contract.Ack``)."""
    repairs: dict[tuple[str, str], list[tuple[int, int]]] = field(default_factory=dict)
    """(gateway, stream) -> runs of numbers a gap skipped: to ask the gateway for (``Repair``)."""
    facts: DeviceFacts = field(default_factory=DeviceFacts)
    """The registry's word on the devices the plan names: the sinks label ``telemetry`` by it
    (``labels.series_labels``)."""


class IngestCore:
    def __init__(
        self, topics: Topics, track_gaps: bool = True, window: ClockWindow | None = None
    ) -> None:
        self.topics = topics
        self.window = window or ClockWindow()
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

    def _reject(self, raw: Raw, why: Rejection, stats: Stats | None = None) -> None:
        (stats or self.stats).rejected[why.reason] += 1
        self._log_once(raw.topic, why, "quarantined a message")

    def _log_once(self, topic: str, why: Rejection, what: str) -> None:
        # once per topic and reason at WARNING: a gateway stuck on a bad firmware floods the log
        level = logging.DEBUG if (topic, why.reason) in self._logged else logging.WARNING
        if len(self._logged) >= _LOGGED_MAX:  # garbage on ever new topics must not grow memory
            self._logged.clear()
        self._logged.add((topic, why.reason))
        logger.log(level, "%s on %s: %s: %s", what, topic, why.reason, why.detail)

    def plan(self, decoded: Decoded, seen: set[str], facts: DeviceFacts | None = None) -> Plan:
        plan = self.start_plan(decoded)
        self.extend_plan(plan, decoded.messages, seen, facts)
        return plan

    def start_plan(self, decoded: Decoded) -> Plan:
        """A plan with the batch's refused messages; ``extend_plan`` adds the good ones."""
        ch = Changes(now=decoded.now)
        ch.quarantine = [quarantine_entry(raw, why, decoded.now) for raw, why in decoded.rejected]
        delivered: list[tuple[str, str, int]] = [
            (m.gateway, m.kind, m.seq) for m in decoded.messages if not isinstance(m, Birth | Death)
        ]
        for raw, _ in decoded.rejected:
            key = delivery_key(self.topics, raw.topic, raw.payload)
            if key is not None:
                delivered.append(key)
        return Plan(ch, delivered=delivered)

    def changes_for(self, messages: Sequence[Message], now: int) -> Changes:
        """The registry changes of some of a plan's ``accepted`` messages alone, the same as
        planning made them (planning them again changes nothing), without counting them."""
        plan = Plan(Changes(now=now))
        IngestCore(self.topics, track_gaps=False, window=self.window).extend_plan(
            plan, messages, set()
        )
        return plan.changes

    def raw_of(self, msg: Message) -> Raw:
        """The topic it came on and its payload again, for the quarantine."""
        leaf = "status" if isinstance(msg, Birth | Death) else msg.kind
        return Raw(self.topics.gateway(msg.gateway, leaf), msg.model_dump_json().encode())

    def quarantine(
        self, ch: Changes, msg: Message, why: Rejection, stats: Stats | None = None
    ) -> None:
        """A decoded message the centre refuses: counted (in ``stats``, by default the core's),
        logged, kept in the quarantine."""
        raw = self.raw_of(msg)
        self._reject(raw, why, stats)
        ch.quarantine.append(quarantine_entry(raw, why, ch.now))

    def extend_plan(
        self, plan: Plan, messages: Iterable[Message], seen: set[str],
        facts: DeviceFacts | None = None,
    ) -> None:  # fmt: skip
        """Drop duplicates (``seen``: ids the registry has), track sequences, add the rest;
        ``facts``: the registry's word on the devices named (``Decoded.devices``)."""
        ch, facts = plan.changes, facts or DeviceFacts()
        plan.facts = facts
        for msg in messages:
            if isinstance(msg, Birth | Death):
                if isinstance(msg, Birth) and self._off_clock(ch, msg, msg.ts):
                    continue
                if isinstance(msg, Birth) and facts.owners:
                    msg = self._own_devices(msg, facts)
                ch.status.append(msg)  # the store registers the devices a birth names
                plan.accepted.append(msg)
                self.stats.ingested[msg.kind] += 1
                continue
            if msg.id in seen or msg.id in ch.seen_ids:
                self.stats.duplicates += 1
                continue
            # seen even when refused below: a redelivery is then a duplicate, not quarantined again
            ch.seen_ids[msg.id] = Seen(msg.gateway, msg.kind, msg.session, msg.seq)
            self._track(msg, plan.repairs)
            if isinstance(msg, TelemetryBatch):
                banned = self._foreign(msg, facts) if facts.owners else frozenset()
                msg = self._telemetry(ch, msg, banned)
                plan.telemetry.append(msg)
            elif isinstance(msg, AlertEvent):
                scoped = None
                if not self._off_clock(ch, msg, msg.ts, msg.raised_at) and not self._not_its_own(
                    ch, msg, facts
                ):
                    scoped = self._scoped(ch, msg, facts)
                if scoped is None:
                    continue
                msg = scoped
                ch.alerts.append(scoped)
                ch.device_seen.setdefault((scoped.gateway, scoped.device), None)
                plan.platform.append(self._platform_alert(scoped))
            else:
                if self._off_clock(ch, msg, msg.ts):
                    continue
                self._health(ch, msg)
            self.stats.ingested[msg.kind] += 1
            plan.accepted.append(msg)

    def _off_clock(self, ch: Changes, msg: Message, *times: int) -> bool:
        """Quarantine ``msg`` if one of its times is outside the clock window."""
        bad = [t for t in times if self.window.refuses(t, ch.now)]
        if not bad:
            return False
        self.stats.refused[Reason.CLOCK] += 1
        detail = (f"time {bad[0]} is {_offset(bad[0] - ch.now)} the centre's clock "
                  f"({ch.now}); allowed: {_offset(-self.window.back_ms)} to "
                  f"{_offset(self.window.ahead_ms)}")  # fmt: skip
        self.quarantine(ch, msg, Rejection(Reason.CLOCK, detail))
        return True

    def _scoped(self, ch: Changes, ev: AlertEvent, facts: DeviceFacts) -> AlertEvent | None:
        """The alert keyed by its gateway, at its device's registered place (if registered)."""
        key = scoped_alert_id(ev.gateway, ev.alert_id)
        if len(key) > ALERT_ID_MAX:
            detail = f"alert_id: {len(key)} characters with its gateway, at most {ALERT_ID_MAX}"
            self.quarantine(ch, ev, Rejection(Reason.OUT_OF_RANGE, detail))
            return None
        update: dict[str, object] = {} if key == ev.alert_id else {"alert_id": key}
        registered = facts.locations.get((ev.gateway, ev.device))
        if registered is not None and registered != ev.location:
            update["location"] = registered  # a gateway cannot move its alerts to other districts
        return ev.model_copy(update=update) if update else ev

    def _not_its_own(self, ch: Changes, ev: AlertEvent, facts: DeviceFacts) -> bool:
        """Quarantine an alert about a device an installer registered under another gateway."""
        if not facts.foreign(ev.gateway, ev.device):
            return False
        self.stats.refused[Reason.FOREIGN_DEVICE] += 1
        detail = f"device {ev.device!r} is registered to another gateway, not {ev.gateway!r}"
        self.quarantine(ch, ev, Rejection(Reason.FOREIGN_DEVICE, detail))
        return True

    def _foreign(self, batch: TelemetryBatch, facts: DeviceFacts) -> frozenset[str]:
        return frozenset(
            d for d in {r.device for r in batch.readings} if facts.foreign(batch.gateway, d)
        )

    def _own_devices(self, msg: Birth, facts: DeviceFacts) -> Birth:
        """A birth registers the devices it names: not other gateways' registered ones."""
        foreign = [d for d in msg.devices if facts.foreign(msg.gateway, d)]
        if not foreign:
            return msg
        self.stats.refused[Reason.FOREIGN_DEVICE] += len(foreign)
        why = Rejection(Reason.FOREIGN_DEVICE, f"names other gateways' devices: {foreign[:10]}")
        self._log_once(self.topics.status(msg.gateway), why, "refused devices")
        return msg.model_copy(update={"devices": [d for d in msg.devices if d not in foreign]})

    def _track(
        self,
        msg: TelemetryBatch | AlertEvent | GatewayHealth,
        repairs: dict[tuple[str, str], list[tuple[int, int]]],
    ) -> None:
        if self._gaps is None:
            return
        seen = self._gaps.observe(msg.gateway, msg.kind, msg.session, msg.seq)
        if seen.kind is Seq.FILLED:
            self.stats.missing -= 1
            self.stats.repaired += 1
        elif seen.kind is Seq.GAP:
            self.stats.gaps += 1
            self.stats.missing += seen.missing
            run = (seen.first, seen.first + seen.missing - 1)
            repairs.setdefault((msg.gateway, msg.kind), []).append(run)
            logger.warning(
                "gateway %s %s stream skipped %d message(s) before seq %d (session %d)",
                msg.gateway, msg.kind, seen.missing, msg.seq, msg.session,
            )  # fmt: skip
        elif seen.kind is Seq.REPLAY:
            self.stats.replays += 1

    def _telemetry(
        self, ch: Changes, batch: TelemetryBatch, banned: frozenset[str] = frozenset()
    ) -> TelemetryBatch:
        """Add the batch's readings; returns it without the readings the window refuses, nor
        those of ``banned`` devices (other gateways' registered devices)."""
        # the hot loop of the bridge (every reading passes here): locals, no allocations
        gw = batch.gateway
        latest, alive = ch.latest, ch.device_seen
        failed, stale = Quality.COMM_ERROR, Quality.STALE
        lo, hi = ch.now - self.window.back_ms, ch.now + self.window.ahead_ms
        refused: list[Reading] = []
        self.stats.readings += len(batch.readings)
        for r in batch.readings:
            if not lo <= r.ts <= hi or r.device in banned:
                refused.append(r)
                continue
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
        if not refused:
            return batch
        self.stats.readings -= len(refused)
        foreign = [r for r in refused if r.device in banned]
        if foreign:
            self._refused_foreign(batch, foreign)
        if len(foreign) < len(refused):
            self._refused_off_clock(batch, [r for r in refused if r.device not in banned], ch.now)
        kept = [r for r in batch.readings if lo <= r.ts <= hi and r.device not in banned]
        return batch.model_copy(update={"readings": kept})

    def _refused_off_clock(self, batch: TelemetryBatch, refused: list[Reading], now: int) -> None:
        self.stats.refused[Reason.CLOCK] += len(refused)
        first = refused[0]
        why = Rejection(Reason.CLOCK, (
            f"{len(refused)} reading(s) outside the clock window, first {first.device}/"
            f"{first.point} at {first.ts}, {_offset(first.ts - now)} the centre's clock"
        ))  # fmt: skip
        self._log_once(self.topics.telemetry(batch.gateway), why, "refused readings")

    def _refused_foreign(self, batch: TelemetryBatch, refused: list[Reading]) -> None:
        self.stats.refused[Reason.FOREIGN_DEVICE] += len(refused)
        devices = sorted({r.device for r in refused})[:10]
        why = Rejection(Reason.FOREIGN_DEVICE, (
            f"{len(refused)} reading(s) of devices registered to other gateways: {devices}"
        ))  # fmt: skip
        self._log_once(self.topics.telemetry(batch.gateway), why, "refused readings")

    def _health(self, ch: Changes, report: GatewayHealth) -> None:
        ch.health.append(report)
        for dev in report.devices:
            ch.device_seen.setdefault((report.gateway, dev.device), None)

    def _platform_alert(self, ev: AlertEvent) -> PlatformOut:
        topic = self.topics.platform_alert(ev.location.district, ev.category, ev.severity.value)
        payload = platform_alert(ev).model_dump_json().encode()  # with its words for people
        return PlatformOut(transition_key(ev.gateway, ev.id), topic, payload)


def quarantine_entry(raw: Raw, why: Rejection, now: int) -> QuarantineEntry:
    return QuarantineEntry(raw.topic[:_QUARANTINE_TOPIC_MAX], str(why.reason), why.detail,
                           raw.payload[:_QUARANTINE_PAYLOAD_MAX], now)  # fmt: skip


def _offset(ms: int) -> str:
    """-90061000 -> '1 d 1 h 1 min 1 s before'; for people reading the quarantine."""
    s, word = abs(ms) // 1000, "after" if ms > 0 else "before"
    parts = [(s // 86400, "d"), (s % 86400 // 3600, "h"), (s % 3600 // 60, "min"), (s % 60, "s")]
    text = " ".join(f"{n} {unit}" for n, unit in parts if n) or "0 s"
    return f"{text} {word}"


def count_points(batches: Sequence[TelemetryBatch]) -> int:
    return sum(len(b.readings) for b in batches)
