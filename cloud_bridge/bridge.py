"""The bridge's I/O shell: MQTT in, the time-series sink and the registry out, acks last.

For each batch of received messages: validate (core), ask the registry which ids it has seen,
plan (core), write the telemetry while publishing the platform alerts, apply the registry changes
in one transaction (the telemetry lane merges up to a second of steps into one, see
``pending.py``), and only then acknowledge the MQTT messages. The next batches are written while
earlier ones commit. Telemetry and events (alerts,
status, health) arrive on two MQTT sessions that run these steps independently. A sink or registry
outage is retried with the messages unacknowledged; a broker failure reconnects, and the broker
redelivers.

A registry that *refuses* a step (``StoreRejected``: a bug, or data the contract let through and
the database does not take) is not an outage: retrying would refuse it forever and stop the lane
for every gateway. The step is then applied in halves until the messages the registry refuses are
found; each is quarantined once (``store_refused``) and acknowledged with the rest, which is
written (``_apply_apart``).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import ParamSpec, TypeVar

import aiomqtt
from pydantic import ValidationError

from cloud_bridge.config import BridgeConfig
from cloud_bridge.core import ClockWindow, IngestCore, Plan, Stats
from cloud_bridge.decode import Message, Reason, Rejection
from cloud_bridge.errors import BridgeError, BrokerError, SinkError
from cloud_bridge.mqtt import Inbound, Lane, MqttSettings, session_settings
from cloud_bridge.pending import Group, Pending
from cloud_bridge.sink import TelemetrySink
from device_registry import Changes, RegistryStore, StoreUnavailable
from device_registry.errors import StoreRejected
from device_registry.ingest.changes import DeviceFacts
from gridwatch.ground.backoff import Backoff
from gridwatch.ground.contract import (
    RANGES_MAX,
    Birth,
    Death,
    Repair,
    TelemetryBatch,
    Topics,
    encode_acks,
)
from gridwatch.ground.mqttsession import MqttSession
from gridwatch.ground.outage import Outage

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")
X = TypeVar("X")

# Two MQTT sessions ("lanes"), so that an alert never queues behind a telemetry backlog (a
# gateway replaying an outage, a slow time-series store): the broker delivers each session's
# messages in order, one after the other.
LANES: dict[str, tuple[str, ...]] = {
    "telemetry": ("telemetry",),
    "events": ("alert", "status", "health"),
}


_OFFLOAD_BYTES = 64 * 1024
_DRAIN_S = 10.0  # how long a lost session waits for its written steps to commit


async def _cpu(size: int, fn: Callable[..., X], *args: object) -> X:
    """Run the pure core on a big batch (up to 100,000 readings, 100s of ms of CPU) in a worker
    thread: the event loop then gets the GIL back every switch interval (5 ms), so the other
    lane's alerts and the registry's I/O do not wait for the whole batch. Small ones run here."""
    if size >= _OFFLOAD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


async def _first(work: Awaitable[X], watched: asyncio.Task[None]) -> X:
    """``work``'s result, unless ``watched`` (a task that runs forever) fails first: its error."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait([task, watched], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        # also when it is done: a session lost while we are cancelled must not leave its error
        # unretrieved ("Task exception was never retrieved" at exit)
        await asyncio.gather(task, return_exceptions=True)
    if not task.done() or task.cancelled():
        watched.result()  # raises what stopped it
    return task.result()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Bridge:
    def __init__(
        self, cfg: BridgeConfig, store: RegistryStore, sink: TelemetrySink,
        clock: Callable[[], int] = now_ms,
    ) -> None:  # fmt: skip
        self.cfg, self.store, self.sink, self.clock = cfg, store, sink, clock
        self.topics = Topics(cfg.prefix)
        # a member of a shared subscription sees only part of each stream: the members audit
        # for gaps together through the registry instead (``_audit_loop``)
        window = ClockWindow(int(cfg.clock_back_s * 1000), int(cfg.clock_ahead_s * 1000))
        self.cores = {
            lane: IngestCore(self.topics, track_gaps=cfg.share_group is None, window=window)
            for lane in LANES
        }
        self.connected = asyncio.Event()
        """Set while every lane is subscribed."""
        self._lanes_up: set[str] = set()
        self._registry_turn = asyncio.Lock()
        self._progress = asyncio.Condition()
        self.sessions: dict[str, MqttSession] = {}
        """Each lane's MQTT session (its ``state`` for health reports)."""
        self._outage: dict[str, Outage] = {}
        self._committed = {lane: Stats() for lane in LANES}
        self._audit = Stats()  # gaps the shared audit found: counted when its claim commits
        self._poison = Stats()  # what the registry refused as it applied: messages, devices
        self._device_limit = cfg.max_devices_per_gateway
        self._limited: set[str] = set()  # gateways warned about their device limit
        self._lanes: dict[str, Lane] = {}  # each connected lane, to publish repair requests on
        self.repairs_asked = 0

    @property
    def stats(self) -> Stats:
        """Running counts, including a step still in progress."""
        return Stats.total(
            [*(core.stats for core in self.cores.values()), self._audit, self._poison]
        )

    @property
    def committed(self) -> Stats:
        """Counts as of the last acknowledged step: what they count is written."""
        return Stats.total([*self._committed.values(), self._audit, self._poison])

    async def run(self) -> None:
        if self.cfg.share_group and self.cfg.mqtt_protocol == "3.1.1":
            raise BridgeError("shared subscriptions (--share-group) need MQTT 5")
        async with asyncio.TaskGroup() as tg:
            for lane, leaves in LANES.items():
                tg.create_task(self._mqtt_loop(lane, leaves), name=f"bridge-{lane}")
            tg.create_task(self._maintenance_loop(), name="bridge-maintenance")
            if self.cfg.share_group:
                tg.create_task(self._audit_loop(), name="bridge-gap-audit")

    async def until(self, predicate: Callable[[Stats], bool], live: bool = False) -> None:
        """Wait until ``predicate`` holds for the stats as of the last completed (acknowledged)
        ingest step, so that what it counted is written; ``live``: for the running counts, checked
        after each step and each failed write. Callers bound the wait."""
        async with self._progress:
            await self._progress.wait_for(lambda: predicate(self.stats if live else self.committed))

    # ---- the MQTT session --------------------------------------------------------------------

    async def _mqtt_loop(self, lane: str, leaves: tuple[str, ...]) -> None:
        settings = self._settings(lane)
        filters = [self.topics.all_gateways(leaf) for leaf in leaves]
        mqtt = MqttSession(session_settings(settings, filters), f"bridge {lane}")
        self.sessions[lane] = mqtt

        async def serve(client: aiomqtt.Client) -> None:
            on = mqtt.endpoint
            assert on is not None  # set while serving
            session = Lane(client, replace(settings, version=mqtt.state.version or "5",
                                           host=on.host, port=on.port))  # fmt: skip
            logger.info("bridge subscribed on %s (MQTT %s): %s", on, mqtt.state.version,
                        filters)  # fmt: skip
            self._lane(lane, up=True)
            self._lanes[lane] = session
            try:
                await self._pump(session, lane)
            except BrokerError as exc:  # the session is gone: reconnect, the broker redelivers
                raise aiomqtt.MqttError(str(exc)) from exc
            finally:
                self._lanes.pop(lane, None)
                self._lane(lane, up=False)

        await mqtt.run(serve)

    def _lane(self, lane: str, up: bool) -> None:
        if up:
            self._lanes_up.add(lane)
        else:
            self._lanes_up.discard(lane)
        if self._lanes_up == set(LANES):
            self.connected.set()
        else:
            self.connected.clear()

    def _settings(self, lane: str) -> MqttSettings:
        c = self.cfg
        return MqttSettings(
            host=c.mqtt_host, port=c.mqtt_port, client_id=f"{c.client_id}-{lane}",
            receive_maximum=c.max_unacked,
            username=c.mqtt_username,
            password=c.mqtt_password, version=c.mqtt_protocol, share_group=c.share_group,
        )  # fmt: skip

    async def _pump(self, session: Lane, lane: str) -> None:
        """Write steps as messages come; commit them to the registry (and acknowledge them) in a
        task of their own, so that the next step is written while earlier ones commit."""
        window = self.cfg.registry_window_s if lane == "telemetry" else 0.0
        if session.settings.version != "5":
            window = 0.0  # a 3.1.1 broker may allow as few as 20 unacknowledged messages
        pending = Pending(window, self.cfg.max_unacked // 2)
        core = self.cores[lane]
        committer = asyncio.create_task(
            self._commit_loop(session, lane, pending), name=f"bridge-{lane}-commit"
        )
        try:
            while True:
                batch = await _first(session.receive(self.cfg.max_batch), committer)
                plan = await self._write(session, batch, core, pending.unfinished)
                pending.add(batch, plan, copy.deepcopy(core.stats))
        finally:
            # The session is gone (or the bridge stops). What was written must still be
            # committed, its message ids above all: the broker redelivers every unacknowledged
            # message, and without those ids the redelivery would be written to the store twice.
            pending.close()
            await asyncio.wait([committer], timeout=_DRAIN_S)
            committer.cancel()  # the registry is down too: redelivery is all that is left
            await asyncio.gather(committer, return_exceptions=True)

    # ---- one ingest step ---------------------------------------------------------------------

    async def _write(
        self, session: Lane, batch: list[Inbound], core: IngestCore, unfinished: set[str]
    ) -> Plan:
        """Validate, dedupe, plan; write the telemetry and publish the platform alerts."""
        stats = core.stats
        size = sum(len(m.payload) for m in batch)
        decoded = await _cpu(size, core.decode, batch, self.clock())
        ids = decoded.ids()
        # written by a step not yet committed. Taken before the lookup, not after: a step that
        # commits while the lookup runs leaves ``unfinished`` but may be missing from what the
        # lookup read, and its ids would be written a second time.
        in_flight = {i for i in ids if i in unfinished}
        seen = await self._retrying(stats, "registry", self.store.seen, ids) if ids else set()
        seen |= in_flight
        named = decoded.devices()
        facts = (
            await self._retrying(stats, "registry", self.store.device_facts, named)
            if named
            else DeviceFacts()
        )
        plan = await _cpu(size, core.plan, decoded, seen, facts)
        await self._write_and_publish(session, plan, stats)
        await self._ask_again(session, plan.repairs)
        plan.telemetry = []  # written: the pending commit keeps only the registry changes
        return plan

    async def _commit_loop(self, session: Lane, lane: str, pending: Pending) -> None:
        """Apply each group of steps in one transaction, then acknowledge its messages."""
        stats = self.cores[lane].stats
        while True:
            group = await pending.take()
            if group is None:
                return  # closed and drained
            # one registry transaction at a time, first come first served: SQLite's own busy
            # wait lets a stream of big telemetry transactions starve a small alert one
            async with self._registry_turn:
                try:
                    refused = await self._retrying(
                        stats, "registry", self.store.apply, group.changes, self._device_limit
                    )
                except StoreRejected as exc:
                    refused = await self._apply_apart(lane, group, exc)
                self._over_limit(lane, refused)
            for batch in group.batches:
                session.ack(batch)  # written everywhere: the broker may forget them
            await self._tell_gateways(session, group.delivered)
            pending.committed(group)
            async with self._progress:
                self._committed[lane] = group.stats
                self._progress.notify_all()

    async def _tell_gateways(self, session: Lane, delivered: list[tuple[str, str, int]]) -> None:
        """Committed: tell each gateway which of its messages it may now forget (one Ack per
        gateway). A lost Ack costs the gateway a resend, which the dedupe drops and acks."""
        acks = encode_acks(delivered, self.clock())
        sent = await asyncio.gather(
            *(session.publish(self.topics.ack(gw), a.model_dump_json().encode())
              for gw, a in acks.items()),
            return_exceptions=True,
        )  # fmt: skip
        for result in sent:
            if isinstance(result, BrokerError):  # the session is gone: the receive side says so
                logger.debug("ack not sent: %s", result)
            elif isinstance(result, BaseException):
                raise result

    async def _ask_again(
        self, session: Lane | None, repairs: dict[tuple[str, str], list[tuple[int, int]]]
    ) -> None:
        """Ask each gateway for the numbers a gap skipped (``Repair``): its outbox still holds
        them if the centre never acknowledged them, or acknowledged them recently. A lost
        request costs the repair only: the gap stays counted."""
        for (gw, stream), runs in repairs.items():
            if session is None:
                logger.info("gateway %s %s stream: no session to ask for seq %s again", gw,
                            stream, runs[:10])  # fmt: skip
                continue
            try:
                msg = Repair.model_validate({"gateway": gw, "stream": stream, "ts": self.clock(),
                                             "ranges": runs[:RANGES_MAX]})  # fmt: skip
            except ValidationError:  # not a gateway's stream: nothing to ask
                continue
            try:
                await session.publish(self.topics.repair(gw), msg.model_dump_json().encode())
            except BrokerError as exc:
                logger.info("gateway %s: repair request not sent: %s", gw, exc)
                continue
            self.repairs_asked += 1

    def _over_limit(self, lane: str, refused: dict[str, int]) -> None:
        """Count the new devices the registry did not add (``max_devices_per_gateway``)."""
        if not refused:
            return
        for gw, n in refused.items():
            self._poison.refused[Reason.DEVICE_LIMIT] += n
            if gw not in self._limited:  # once per gateway: it will keep naming new ones
                self._limited.add(gw)
                logger.warning(
                    "gateway %s named more than %d devices of its own; %d new one(s) not added "
                    "(%s lane): register them, or raise max_devices_per_gateway",
                    gw, self._device_limit, n, lane,
                )  # fmt: skip

    async def _apply_apart(self, lane: str, group: Group, exc: StoreRejected) -> dict[str, int]:
        """The registry refused the group: write it in halves, quarantine what it refuses."""
        core, now = self.cores[lane], group.changes.now
        logger.warning("registry refused a step of %d message(s) (%s); finding the message(s) it "
                       "refuses", len(group.accepted), exc)  # fmt: skip
        msgs, mid = group.accepted, len(group.accepted) // 2
        refused: dict[str, int] = {}
        poison = [*await self._bisect(core, msgs[:mid], now, refused),
                  *await self._bisect(core, msgs[mid:], now, refused)]  # fmt: skip
        bad = {id(m) for m, _ in poison}
        written = {m.id for m in msgs if id(m) not in bad and not isinstance(m, Birth | Death)}
        rest = Changes(now=now, quarantine=list(group.changes.quarantine))
        # the ids of what was not written (refused by decode, policy or the registry) are kept
        # all the same: a redelivery is then a duplicate, never quarantined twice
        rest.seen_ids = {i: s for i, s in group.changes.seen_ids.items() if i not in written}
        # counted apart from the lane's (its later steps' counts are taken already); logged one
        # line each by the core
        counts = Stats()
        for msg, why in poison:
            core.quarantine(rest, msg, Rejection(Reason.STORE_REFUSED, str(why)[:500]), counts)
            counts.ingested[msg.kind] -= 1
        await self._quarantine_until_stored(core.stats, rest)
        self._poison = Stats.total([self._poison, counts])
        return refused

    async def _quarantine_until_stored(self, stats: Stats, rest: Changes) -> None:
        """A registry that refuses even the quarantine is broken itself (a missing table, a
        failed migration), not the messages: then it is an outage, nothing is acknowledged,
        and the quarantine is retried like any write until it is stored."""

        async def apply(changes: Changes) -> None:
            try:
                await self.store.apply(changes)
            except StoreRejected as exc:
                raise StoreUnavailable(f"it refuses even the quarantine: {exc}") from exc

        await self._retrying(stats, "registry", apply, rest)

    async def _bisect(
        self, core: IngestCore, msgs: list[Message], now: int, refused: dict[str, int]
    ) -> list[tuple[Message, StoreRejected]]:
        """Apply ``msgs``, or if the registry refuses them, each half: the messages it refuses
        alone, with its error (a few transactions per refused message, not one per message)."""
        if not msgs:
            return []
        try:
            changes = core.changes_for(msgs, now)
            over = await self._retrying(
                core.stats, "registry", self.store.apply, changes, self._device_limit
            )
        except StoreRejected as exc:
            if len(msgs) == 1:
                return [(msgs[0], exc)]
            mid = len(msgs) // 2
            return [*await self._bisect(core, msgs[:mid], now, refused),
                    *await self._bisect(core, msgs[mid:], now, refused)]  # fmt: skip
        for gw, n in over.items():
            refused[gw] = refused.get(gw, 0) + n
        return []

    async def _write_and_publish(self, session: Lane, plan: Plan, stats: Stats) -> None:
        """Alerts are what someone is waiting for: they go out while the telemetry is written,
        not after it (a crash in between republishes them: at-least-once, like the rest)."""
        try:
            async with asyncio.TaskGroup() as tg:
                if plan.telemetry:
                    tg.create_task(self._write_telemetry(plan.telemetry, stats))
                for topic, payload in plan.platform:
                    tg.create_task(session.publish(topic, payload, qos=1))
        except BaseExceptionGroup as group:
            lost, _ = group.split(BrokerError)
            if lost is None:
                raise
            raise lost.exceptions[0] from group  # the session is gone: reconnect, redeliver
        stats.alerts_published += len(plan.platform)

    async def _write_telemetry(self, batches: list[TelemetryBatch], stats: Stats) -> None:
        written, skipped = await self._retrying(stats, "sink", self.sink.write, batches)
        stats.points_written += written
        stats.points_skipped += skipped

    async def _retrying(
        self,
        stats: Stats,
        what: str,
        call: Callable[P, Awaitable[T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        backoff = Backoff(first_s=0.2, cap_s=5.0)
        while True:
            try:
                result = await call(*args, **kwargs)
            except (SinkError, StoreUnavailable) as exc:
                self._failed(what, exc)
                stats.write_failures += 1
                async with self._progress:
                    self._progress.notify_all()
                await asyncio.sleep(backoff.next())
                continue
            self._recovered(what)
            return result

    def _failed(self, what: str, exc: Exception) -> None:
        # first failure of an outage at ERROR, repeats at DEBUG, its end at INFO: the one helper
        if what not in self._outage:
            self._outage[what] = Outage(logger, "bridge", what, "messages stay unacknowledged")
        self._outage[what].failed(exc)

    def _recovered(self, what: str) -> None:
        if what in self._outage:
            self._outage[what].ok()

    # ---- housekeeping ------------------------------------------------------------------------

    async def _audit_loop(self) -> None:
        """Every ``gap_audit_s``: audit the numbers received ``gap_settle_s`` ago or earlier
        (every member has committed its share by then) for gaps; see ``device_registry.ingest.seqaudit``."""
        since = self.clock() - 2 * int(self.cfg.gap_settle_s * 1000)  # streams live at start
        while True:
            await asyncio.sleep(self.cfg.gap_audit_s)
            settled = self.clock() - int(self.cfg.gap_settle_s * 1000)
            try:
                gaps = await self.store.audit_sequences(since, settled)
            except StoreUnavailable as exc:
                logger.warning("gap audit skipped: %s", exc)
                continue
            # overlapping windows: a stream whose claim lost a race is looked at once more (the
            # ranges audited start where the stored audit stopped, so nothing is counted twice)
            since = settled - int(self.cfg.gap_audit_s * 1000)
            for gap in gaps:
                self._audit.gaps += len(gap.holes)
                self._audit.missing += gap.missing
                runs = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in gap.holes[:10])
                logger.warning(
                    "gateway %s %s stream: %d message(s) never arrived: seq %s (audited "
                    "across the shared subscription); asking the gateway for them again",
                    gap.gateway, gap.stream, gap.missing, runs,
                )  # fmt: skip
            lane = self._lanes.get("events") or next(iter(self._lanes.values()), None)
            await self._ask_again(lane, {(g.gateway, g.stream): list(g.holes) for g in gaps})
            if gaps:
                async with self._progress:
                    self._progress.notify_all()

    async def _maintenance_loop(self) -> None:
        last = self.stats.points_written
        while True:
            await asyncio.sleep(self.cfg.maintenance_s)
            now = self.clock()
            try:
                pruned = await self.store.prune(
                    now, self.cfg.seen_retention_s * 1000, self.cfg.quarantine_keep
                )
                await self.sink.maintain(now)
            except (SinkError, StoreUnavailable) as exc:
                logger.warning("housekeeping skipped: %s", exc)
                continue
            rate = (self.stats.points_written - last) / self.cfg.maintenance_s
            last = self.stats.points_written
            logger.info(
                "bridge: %.0f points/s; pruned %d ids; %s", rate, pruned, self.stats.as_dict()
            )
