"""The bridge's I/O shell: MQTT in, the time-series sink and the registry out, acks last.

For each batch of received messages: validate (core), ask the registry which ids it has seen,
plan (core), write the telemetry while publishing the platform alerts, apply the registry changes
in one transaction (the telemetry lane merges up to a second of steps into one, see
``pending.py``), and only then acknowledge the MQTT messages. The next batches are written while
earlier ones commit. Telemetry and events (alerts,
status, health) arrive on two MQTT sessions that run these steps independently. A sink or registry
outage is retried with the messages unacknowledged; a broker failure reconnects, and the broker
redelivers.

Alerts do not wait for the registry: while a step waits for its lookups (``RELAY_AFTER_S``, or
at once when the registry failed), its messages and all that arrive behind it are relayed
(``_relay``, ``relay.py``): their platform alerts published, their telemetry written, and the
registry records them later in the waiting step. Every platform publish, normal or relayed, is
checked against and recorded in the bridge's publish ledger (``ledger.py``), so a transition goes
out once, across restarts too; under a share group also against the other members' claims
(``claims.py``), so a resend the group hands to another member does not go out again.

A registry that *refuses* a step (``StoreRejected``: a bug, or data the contract let through and
the database does not take) is not an outage: retrying would refuse it forever and stop the lane
for every gateway. The step is then applied in halves until the messages the registry refuses are
found; each is quarantined once (``store_refused``) and acknowledged with the rest, which is
written (``_apply_apart``).

What the bridge depends on is told by ``report`` (``device_registry.health.centre``): each
lane's session, the two stores as its calls met them, the oldest message received and not yet
committed. The registry in the same process reads it live; every ``heartbeat_s`` it is also
written to the registry database for registries in other processes (``_heartbeat_loop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, ParamSpec, TypeVar

import aiomqtt
from pydantic import ValidationError

from cloud_bridge.claims import Claims, claim_topic
from cloud_bridge.config import BridgeConfig
from cloud_bridge.core import ClockWindow, IngestCore, Plan, PlatformOut, Stats
from cloud_bridge.decode import Message, Reason, Rejection
from cloud_bridge.errors import BridgeError, BrokerError, LocalStoreError, SinkError
from cloud_bridge.inbox import Inbox
from cloud_bridge.ledger import PublishLedger, ledger_path
from cloud_bridge.mqtt import Inbound, Lane, MqttSettings, session_settings
from cloud_bridge.pending import Group, Pending
from cloud_bridge.relay import FactsCache, fresh
from cloud_bridge.sink import TelemetrySink
from cloud_bridge.spool import Spool, Spooled, spool_path
from cloud_bridge.watched import Watched
from device_registry import Changes, RegistryStore, StoreUnavailable
from device_registry.errors import StoreRejected
from device_registry.health.centre import BridgeReport, LaneState
from device_registry.health.store import beat, forget
from device_registry.ingest.changes import DeviceFacts
from device_registry.ingest.seqaudit import Gap, closed
from gridwatch.ground.backoff import Backoff
from gridwatch.ground.contract import (
    RANGES_MAX,
    AlertEvent,
    Birth,
    Death,
    Repair,
    TelemetryBatch,
    Topics,
    encode_acks,
)
from gridwatch.ground.mqttsession import MqttSession, SessionSettings
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
UNSHARED = frozenset({"status"})
"""Leaves every member of a share group takes whole: a Birth or a Death is state (retained,
ordered by its session, applying it twice changes nothing) and not in the gateway's outbox, so a
turn of it held by a member that is gone, or dropped with that member's expired session, would
be lost; a plain subscription also gets the retained ones again when a session starts anew."""
SHARED_KEEPALIVE_S = 10
"""The events lane's keepalive under a share group: a member that hangs (SIGSTOP, a frozen VM, a
cut cable) keeps its connection, and its turn of the alerts, until the broker has heard nothing
for 1.5 keepalives (15 s); only then does its session's expiry start."""


_OFFLOAD_BYTES = 64 * 1024
UNFILLED_MAX = 200
"""Gaps a member of a share group reported and keeps looking for (one indexed query each per
audit)."""
_DRAIN_S = 10.0  # how long a lost session waits for its written steps to commit
RELAY_AFTER_S = 0.3
"""How long a step may wait for the registry's answer before its alerts are relayed without it:
at once when the registry has failed, this long when it hangs (a network partition)."""
_EARLY_MAX = 100_000  # ids of batches written ahead of the registry, remembered to skip once
SPOOLED = frozenset({"events"})
"""Lanes that spool while the registry is out (``spool.py``): alerts, status and health, small
and few. Telemetry waits in the broker: a city's readings would fill a disk."""


async def _cpu(size: int, fn: Callable[..., X], *args: object) -> X:
    """Run the pure core on a big batch (up to 100,000 readings, 100s of ms of CPU) in a worker
    thread: the event loop then gets the GIL back every switch interval (5 ms), so the other
    lane's alerts and the registry's I/O do not wait for the whole batch. Small ones run here."""
    if size >= _OFFLOAD_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


async def _first(work: Awaitable[X], *watched: asyncio.Task[None]) -> X:
    """``work``'s result, unless one of ``watched`` (tasks that run forever) fails first: its
    error."""
    task = asyncio.ensure_future(work)
    try:
        await asyncio.wait([task, *watched], return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        # also when it is done: a session lost while we are cancelled must not leave its error
        # unretrieved ("Task exception was never retrieved" at exit)
        await asyncio.gather(task, return_exceptions=True)
    if not task.done() or task.cancelled():
        for stopped in watched:
            if stopped.done():
                stopped.result()  # raises what stopped it
    return task.result()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _as_runs(numbers: list[int]) -> tuple[tuple[int, int], ...]:
    """Sorted numbers as (first, last) runs."""
    runs: list[tuple[int, int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], n)
        else:
            runs.append((n, n))
    return tuple(runs)


def _runs(runs: tuple[tuple[int, int], ...]) -> str:
    """The first ten runs as a person reads them: ``5, 7-9``."""
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs[:10])


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
        self._files_outage: Outage | None = None  # the bridge's own files (ledger, spool)
        self._audit_outage = Outage(logger, "bridge gap audit", "registry",
                                    "gaps are audited when it is back")  # fmt: skip
        self._housekeeping_outage = Outage(logger, "bridge housekeeping", "a store",
                                           "ids and old samples are pruned when it is back")  # fmt: skip
        self._committed = {lane: Stats() for lane in LANES}
        self._audit = Stats()  # gaps the shared audit found: counted when its claim commits
        self._unfilled: list[Gap] = []
        """Gaps this member reported, still open, oldest first: withdrawn as their numbers
        arrive."""
        self._poison = Stats()  # what the registry refused as it applied: messages, devices
        self._device_limit = cfg.max_devices_per_gateway
        self._limited: set[str] = set()  # gateways warned about their device limit
        self._lanes: dict[str, Lane] = {}  # each connected lane, to publish repair requests on
        self.repairs_asked = 0
        # relaying while the registry does not answer (``relay.py``): stand-in cores that plan
        # without counting, the device facts last read, the lanes whose step waits for the
        # registry, the transitions being published, the batches written ahead of the registry
        self._standins = {
            lane: IngestCore(self.topics, track_gaps=False, window=window) for lane in LANES
        }
        self._facts = FactsCache()
        self._stalled: set[str] = set()
        # one relay at a time per lane, in the order the batches came (a raise before its clear)
        self._relay_turn = {lane: asyncio.Lock() for lane in LANES}
        self._publishing: set[str] = set()
        self._written_early: set[str] = set()
        self.ledger: PublishLedger | None = None
        self.claims: Claims | None = None
        """Under a share group: what the members said they published (``claims.py``)."""
        if cfg.share_group:
            self.claims = Claims(self._claims_settings(), self.topics, cfg.claims_expiry_s)
        self._recording: set[asyncio.Future[Any]] = set()  # platform publishes in flight
        """The record of published transitions, open while the bridge runs."""
        self.spool: Spool | None = None
        """The events lane's spool while the registry is out, open while the bridge runs."""
        self.relays = 0
        """Batches relayed because a step waited for the registry (``_relay``)."""
        self.stores = {what: Watched(logger, what, "messages stay unacknowledged")
                       for what in ("sink", "registry")}  # fmt: skip
        """How the bridge's calls meet each store: for health reports, the log and the steps
        that wait for it (``watched.py``)."""
        self._waiting: dict[str, deque[int]] = {lane: deque() for lane in LANES}
        """Per lane, when each batch received and not yet committed was received (in order)."""
        self._commit_delay_ms: int | None = None

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
        self.ledger = await PublishLedger.open(ledger_path(self.cfg.data_dir, self.cfg.client_id))
        try:
            self.spool = await Spool.open(spool_path(self.cfg.data_dir, self.cfg.client_id))
        except BaseException:
            await self.ledger.close()
            raise
        try:
            async with asyncio.TaskGroup() as tg:
                for lane in LANES:
                    tg.create_task(self._mqtt_loop(lane), name=f"bridge-{lane}")
                tg.create_task(self._maintenance_loop(), name="bridge-maintenance")
                tg.create_task(self._heartbeat_loop(), name="bridge-heartbeat")
                if self.claims is not None:
                    tg.create_task(self.claims.run(), name="bridge-claims")
                if self.cfg.share_group:
                    tg.create_task(self._audit_loop(), name="bridge-gap-audit")
        finally:
            if self._recording:  # what went out is on the ledger before it closes
                await asyncio.wait(self._recording, timeout=5)
            ledger, self.ledger = self.ledger, None
            spool, self.spool = self.spool, None
            await ledger.close()
            await spool.close()

    async def until(self, predicate: Callable[[Stats], bool], live: bool = False) -> None:
        """Wait until ``predicate`` holds for the stats as of the last completed (acknowledged)
        ingest step, so that what it counted is written; ``live``: for the running counts, checked
        after each step and each failed write. Callers bound the wait."""
        async with self._progress:
            await self._progress.wait_for(lambda: predicate(self.stats if live else self.committed))

    # ---- the MQTT session --------------------------------------------------------------------

    async def _mqtt_loop(self, lane: str) -> None:
        settings = self._settings(lane)
        mqtt = MqttSession(self._session_settings(lane), f"bridge {lane}")
        filters = [f for f, _ in mqtt.settings.subscriptions]
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

    def _session_settings(self, lane: str) -> SessionSettings:
        leaves = LANES[lane]
        filters = [self.topics.all_gateways(leaf) for leaf in leaves]
        whole = [self.topics.all_gateways(leaf) for leaf in leaves if leaf in UNSHARED]
        return session_settings(self._settings(lane), filters, whole)

    def _claims_settings(self) -> SessionSettings:
        """A clean session (the retained claims come again on each connect), acknowledged on
        receipt: what it hears is advice, kept in memory."""
        s = session_settings(self._settings("claims"), [])
        return replace(s, persistent=False, manual_ack=False, receive_maximum=None,
                       note_file=None, may_hold=(), protocol="5",
                       subscriptions=((self.topics.all_gateways("published/+"), 1),))  # fmt: skip

    def _settings(self, lane: str) -> MqttSettings:
        c = self.cfg
        settings = MqttSettings(
            host=c.mqtt_host, port=c.mqtt_port, client_id=f"{c.client_id}-{lane}",
            receive_maximum=c.max_unacked,
            username=c.mqtt_username,
            password=c.mqtt_password, version=c.mqtt_protocol, share_group=c.share_group,
            data_dir=c.data_dir,
        )  # fmt: skip
        if c.share_group and lane == "events":
            # what the gateways send again (alerts, health) must not wait for a member that is
            # gone: past the expiry the broker stops queueing its turn (docs/central.md)
            settings = replace(settings, session_expiry_s=c.shared_events_expiry_s,
                               keepalive=min(settings.keepalive, SHARED_KEEPALIVE_S))  # fmt: skip
        return settings

    async def _pump(self, session: Lane, lane: str) -> None:
        """Write steps as messages come; commit them to the registry (and acknowledge them) in a
        task of their own, so that the next step is written while earlier ones commit."""
        window = self.cfg.registry_window_s if lane == "telemetry" else 0.0
        if session.settings.version != "5":
            window = 0.0  # a 3.1.1 broker may allow as few as 20 unacknowledged messages
        pending = Pending(window, self.cfg.max_unacked // 2)
        core = self.cores[lane]
        spool = self.spool if lane in SPOOLED else None
        inbox = Inbox(spool, lane, await spool.last(lane) if spool else 0)
        committer = asyncio.create_task(
            self._commit_loop(session, lane, pending), name=f"bridge-{lane}-commit"
        )
        receiver = asyncio.create_task(
            self._receive(session, lane, inbox), name=f"bridge-{lane}-receive"
        )
        try:
            while True:
                batch = await _first(inbox.take(self.cfg.max_batch), committer, receiver)
                self._waiting[lane].append(self.clock())
                # watched while it writes too: a step waiting out a registry outage must not
                # also wait out a lost broker session, or nothing is relayed until both are back
                plan = await _first(
                    self._write(session, lane, batch, inbox, pending.unfinished), receiver
                )
                pending.add(batch, plan, copy.deepcopy(core.stats))
        finally:
            # what it received and the writer did not take stays unacknowledged: redelivered
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)
            # The session is gone (or the bridge stops). What was written must still be
            # committed, its message ids above all: the broker redelivers every unacknowledged
            # message, and without those ids the redelivery would be written to the store twice.
            pending.close()
            await asyncio.wait([committer], timeout=_DRAIN_S)
            committer.cancel()  # the registry is down too: redelivery is all that is left
            await asyncio.gather(committer, return_exceptions=True)
            self._waiting[lane].clear()  # the broker holds them again

    async def _receive(self, session: Lane, lane: str, inbox: Inbox) -> None:
        spooled = lane in SPOOLED and self.spool is not None
        while True:
            batch = await session.receive(self.cfg.max_batch)
            if spooled and (lane in self._stalled or inbox.spooling):
                # the writer waits for the registry (or has not caught up with the spool): hold
                # it on disk and let the broker send more, or after Receive Maximum messages
                # the next alert would wait in the broker
                try:
                    await inbox.hold(batch)
                except LocalStoreError as exc:  # a full disk: the broker keeps it, as before
                    self._local_failed(exc, "messages stay unacknowledged in the broker")
                    inbox.put(batch)
                else:
                    session.ack(batch)
            else:
                inbox.put(batch)
            if lane in self._stalled:  # the writer waits for the registry: do not wait with it
                async with self._relay_turn[lane]:
                    await self._relay(session, lane, batch)

    # ---- one ingest step ---------------------------------------------------------------------

    async def _write(
        self, session: Lane, lane: str, batch: list[Inbound], inbox: Inbox, unfinished: set[str]
    ) -> Plan:
        """Validate, dedupe, plan; write the telemetry and publish the platform alerts."""
        core = self.cores[lane]
        stats = core.stats
        size = sum(len(m.payload) for m in batch)
        decoded = await _cpu(size, core.decode, batch, self.clock())
        ids = decoded.ids()
        # written by a step not yet committed. Taken before the lookup, not after: a step that
        # commits while the lookup runs leaves ``unfinished`` but may be missing from what the
        # lookup read, and its ids would be written a second time.
        in_flight = {i for i in ids if i in unfinished}
        seen, facts = await self._look_up(session, lane, batch, inbox, ids, decoded.devices())
        seen |= in_flight
        plan = await _cpu(size, core.plan, decoded, seen, facts)
        self._skip_written_early(plan)
        await self._write_and_publish(session, plan, stats)
        await self._ask_again(session, plan.repairs)
        plan.telemetry = []  # written: the pending commit keeps only the registry changes
        return plan

    async def _look_up(
        self, session: Lane, lane: str, batch: list[Inbound], inbox: Inbox, ids: list[str],
        named: set[tuple[str, str]],
    ) -> tuple[set[str], DeviceFacts]:  # fmt: skip
        """The registry's seen ids and device facts for a step. While it keeps the step waiting
        (it failed, or has not answered within ``RELAY_AFTER_S``), the step's messages and all
        that arrive behind it are relayed (``_relay``): an alert does not wait for the registry."""
        stats = self.cores[lane].stats

        async def both() -> tuple[set[str], DeviceFacts]:
            seen = await self._retrying(stats, "registry", self.store.seen, ids) if ids else set()
            if not named:
                return seen, DeviceFacts()
            return seen, await self._retrying(stats, "registry", self.store.device_facts, named)

        lookup = asyncio.ensure_future(both())
        failing = asyncio.ensure_future(self.stores["registry"].failing.wait())
        try:
            await asyncio.wait(
                [lookup, failing], timeout=RELAY_AFTER_S, return_when=asyncio.FIRST_COMPLETED
            )
            # relayed also when the lookup failed in a way not retried (the registry refused it):
            # that error then stops the step, but not before the alerts are out
            if not lookup.done() or lookup.exception() is not None:
                # from here on the receiver relays what comes; it waits for its turn (taken
                # here without a pause) until what came before is relayed
                self._stalled.add(lane)
                async with self._relay_turn[lane]:
                    behind = [batch, *inbox.waiting()]
                    await self._spill(session, lane, batch, inbox)
                    for waiting in behind:
                        await self._relay(session, lane, waiting)
            seen, facts = await lookup
        finally:
            self._stalled.discard(lane)
            for task in (lookup, failing):
                task.cancel()
            await asyncio.gather(lookup, failing, return_exceptions=True)
        self._facts.remember(named, facts)
        return seen, facts

    async def _spill(self, session: Lane, lane: str, batch: list[Inbound], inbox: Inbox) -> None:
        """A spooled lane that stalls moves what it holds unacknowledged (the step's ``batch``,
        in place, and what waits in memory) into its spool, and acknowledges it: the broker
        sends a session no more than its Receive Maximum of unacknowledged messages."""
        if lane not in SPOOLED or self.spool is None or not batch:
            return
        if isinstance(batch[0], Spooled):  # read from the spool: acknowledged already
            return
        try:
            spooled, moved = await inbox.spill(batch)
        except LocalStoreError as exc:
            self._local_failed(exc, "messages stay unacknowledged in the broker")
            return
        for held in [batch, *moved]:
            session.ack(held)
        batch[:] = spooled  # committed later as spooled rows: the spool forgets them then

    async def _relay(self, session: Lane, lane: str, batch: list[Inbound]) -> None:
        """Publish ``batch``'s platform alerts now, placed by the device facts last read, and
        write its telemetry once; the step that waits for the registry records them when it
        answers (and neither publishes nor writes them again)."""
        standin, stats = self._standins[lane], self.cores[lane].stats
        size = sum(len(m.payload) for m in batch)
        decoded = await _cpu(size, standin.decode, batch, self.clock())
        facts, unknown = self._facts.recall(decoded.devices())
        plan = await _cpu(size, standin.plan, decoded, set(), facts)
        placed_by_payload = unknown & {
            (m.gateway, m.device) for m in decoded.messages if isinstance(m, AlertEvent)
        }
        if placed_by_payload and plan.platform:
            logger.warning(
                "registry out: alerts of %s relayed at the place their payload names (the "
                "registry was not asked about these devices since the bridge started)",
                ", ".join(f"{gw}/{dev}" for gw, dev in sorted(placed_by_payload)[:10]),
            )  # fmt: skip
        relayed = await self._publish(session, plan.platform, stats)
        if relayed:
            logger.info("registry out: %d alert(s) relayed to the platform; recorded in the "
                        "registry when it answers again", relayed)  # fmt: skip
        # written ahead only when the registry failed, not when it is merely slow: without its
        # seen ids a redelivered batch is written again (stored once only where the store
        # dedupes, as VictoriaMetrics with its dedup flag)
        # and only of devices whose facts were read before: a series without its place labels
        # would be a series of its own, a hole in every district's query; those wait
        ahead = [b for b in plan.telemetry if not any((b.gateway, r.device) in unknown
                                                      for r in b.readings)]  # fmt: skip
        if ahead and self.stores["registry"].failing.is_set():
            await self._write_early(ahead, facts, stats)
        self.relays += 1
        async with self._progress:
            self._progress.notify_all()

    async def _write_early(
        self, batches: list[TelemetryBatch], facts: DeviceFacts, stats: Stats
    ) -> None:
        """Telemetry written ahead of the registry, once, labelled by the device facts last read
        (the series it had before the outage); if the store fails too, the waiting step writes
        it (retrying) as usual."""
        batches = [b for b in batches if b.id not in self._written_early]
        if not batches:
            return
        try:
            written, skipped = await self.sink.write(batches, facts)
        except SinkError as exc:
            logger.debug("telemetry not written ahead of the registry: %s", exc)
            return
        stats.points_written += written
        stats.points_skipped += skipped
        if len(self._written_early) > _EARLY_MAX:  # left by lost sessions: rewriting is harmless
            self._written_early.clear()
        self._written_early.update(b.id for b in batches)

    def _skip_written_early(self, plan: Plan) -> None:
        if self._written_early and plan.telemetry:
            early = self._written_early
            kept = [b for b in plan.telemetry if b.id not in early]
            early.difference_update(b.id for b in plan.telemetry)
            plan.telemetry = kept

    async def _publish(self, session: Lane, outgoing: list[PlatformOut], stats: Stats) -> int:
        """Publish the transitions not published before, by this bridge now or in an earlier
        run; each once, even when the normal step and the relay hold it at the same time.
        Recorded once the broker has them. Returns how many went out."""
        if not outgoing:
            return 0
        keys = [o.transition for o in outgoing]
        before = await self._published_before(keys)
        if self.claims is not None:  # another member of the group may have published it
            before |= await self.claims.claimed(keys)
        todo = fresh(outgoing, before | self._publishing)  # no await between this and the claim
        self._publishing.update(o.transition for o in todo)
        done: list[str] = []
        sent: list[BaseException | None] = []
        recorded = False
        try:
            # a stop (cancellation) while the broker takes them must neither lose the record nor
            # cut the sending short, or the next run publishes them again: the sending and its
            # record finish in a task of their own, and ``run`` waits for it before it closes
            sending = asyncio.ensure_future(self._send_and_record(session, todo))
            self._recording.add(sending)
            sending.add_done_callback(self._recording.discard)
            sent, done, recorded = await asyncio.shield(sending)
        finally:
            # kept in memory while the ledger cannot record them: then not sent twice by this run
            self._publishing.difference_update(
                o.transition for o in todo if o.transition not in done or recorded
            )
        stats.alerts_published += len(done)
        for result in sent:
            if isinstance(result, BaseException):
                raise result
        return len(done)

    async def _send_and_record(
        self, session: Lane, todo: list[PlatformOut]
    ) -> tuple[list[BaseException | None], list[str], bool]:
        sent: list[BaseException | None] = await asyncio.gather(
            *(session.publish(o.topic, o.payload, qos=1) for o in todo), return_exceptions=True
        )
        done = [o.transition for o, r in zip(todo, sent, strict=True) if r is None]
        recorded = await self._record_published(done)
        await self._claim(session, done)
        return sent, done, recorded

    async def _claim(self, session: Lane, transitions: list[str]) -> None:
        """Tell the other members of the group (``claims.py``); a claim that does not reach the
        broker costs a possible second publish by another member, never this alert."""
        if self.claims is None or not transitions:
            return
        self.claims.heard(transitions)
        payload = json.dumps({"bridge": self.cfg.client_id, "at": self.clock()}).encode()
        sent = await asyncio.gather(
            *(session.publish(claim_topic(self.topics, t), payload, qos=1, retain=True,
                              expiry_s=self.cfg.claims_expiry_s) for t in transitions),
            return_exceptions=True,
        )  # fmt: skip
        for result in sent:
            if isinstance(result, BrokerError):
                logger.warning("claim not published (another bridge of the group may publish "
                               "the alert again): %s", result)  # fmt: skip
                return
            if isinstance(result, BaseException):
                raise result

    async def _published_before(self, transitions: list[str]) -> set[str]:
        if self.ledger is None:
            return set()
        try:
            found = await self.ledger.published(transitions)
        except LocalStoreError as exc:
            self._ledger_failed(exc)
            return set()
        self._files_ok()
        return found

    async def _record_published(self, transitions: list[str]) -> bool:
        if self.ledger is None or not transitions:
            return True
        try:
            await self.ledger.record(transitions, self.clock())
        except LocalStoreError as exc:
            self._ledger_failed(exc)
            return False
        self._files_ok()
        return True

    def _ledger_failed(self, exc: LocalStoreError) -> None:
        self._local_failed(exc, "alerts are published all the same (a bridge restart may "
                           "publish one twice)")  # fmt: skip

    def _local_failed(self, exc: LocalStoreError, consequence: str) -> None:
        """A file of the bridge's own failed: ERROR once, until one of them works again."""
        if self._files_outage is None:
            self._files_outage = Outage(logger, "bridge", "its own files", consequence)
        self._files_outage.failed(exc)

    def _files_ok(self) -> None:
        if self._files_outage is not None:
            self._files_outage.ok()

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
            self._committed_now(lane, len(group.batches))
            await self._unspool(group)
            await self._tell_gateways(session, group.delivered)
            pending.committed(group)
            async with self._progress:
                self._committed[lane] = group.stats
                self._progress.notify_all()

    async def _unspool(self, group: Group) -> None:
        """Committed: the spool may forget what it held of the group. Should that fail, the
        next run ingests them again, and the registry drops them as duplicates."""
        rows = [m.row for batch in group.batches for m in batch if isinstance(m, Spooled)]
        if not rows or self.spool is None:
            return
        try:
            await self.spool.forget(rows)
        except LocalStoreError as exc:
            self._local_failed(exc, "the next start ingests them again (as duplicates)")

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
                    tg.create_task(self._write_telemetry(plan.telemetry, plan.facts, stats))
                if plan.platform:
                    tg.create_task(self._publish(session, plan.platform, stats))
        except BaseExceptionGroup as group:
            lost, _ = group.split(BrokerError)
            if lost is None:
                raise
            raise lost.exceptions[0] from group  # the session is gone: reconnect, redeliver

    async def _write_telemetry(
        self, batches: list[TelemetryBatch], facts: DeviceFacts, stats: Stats
    ) -> None:
        written, skipped = await self._retrying(stats, "sink", self.sink.write, batches, facts)
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
                # ERROR at an outage's start, DEBUG for the repeats, INFO at its end (the one
                # helper), the health report, and the steps that wait for it: ``watched.py``
                self.stores[what].failed(self.clock(), exc)
                stats.write_failures += 1
                async with self._progress:
                    self._progress.notify_all()
                await asyncio.sleep(backoff.next())
                continue
            self.stores[what].ok(self.clock())
            return result

    # ---- health ------------------------------------------------------------------------------

    def _committed_now(self, lane: str, batches: int) -> None:
        waiting = self._waiting[lane]
        first = waiting[0] if waiting else None
        for _ in range(min(batches, len(waiting))):
            waiting.popleft()
        if first is not None:
            self._commit_delay_ms = self.clock() - first

    def report(self) -> BridgeReport:
        """What this bridge depends on, and how it is going, now."""
        lanes = {}
        for lane in LANES:
            session = self.sessions.get(lane)
            since = None if session is None else session.state.since
            lanes[lane] = LaneState(connected=session is not None and session.state.connected,
                                    since=None if since is None else int(since * 1000))  # fmt: skip
        oldest = [w[0] for w in self._waiting.values() if w]
        return BridgeReport(
            bridge=self.cfg.client_id, at=self.clock(), lanes=lanes,
            store="influx" if self.cfg.influx_url else "sqlite",
            sink=self.stores["sink"].state, registry=self.stores["registry"].state,
            oldest_uncommitted=min(oldest) if oldest else None,
            commit_delay_ms=self._commit_delay_ms, share_group=self.cfg.share_group,
        )  # fmt: skip

    async def _heartbeat_loop(self) -> None:
        """Write ``report`` to the registry database for registries in other processes; a
        clean stop removes it (a crash leaves it to go stale: "not heard from")."""
        refused = False
        try:
            while True:
                try:
                    async with self._registry_turn:
                        await beat(self.store, self.report())
                except StoreUnavailable as exc:  # the registry says "database down" itself
                    logger.debug("heartbeat not written: %s", exc)
                except StoreRejected as exc:  # an unmigrated database: ingest must go on
                    level = logging.DEBUG if refused else logging.WARNING
                    logger.log(level, "heartbeat refused by the registry: %s", exc)
                    refused = True
                await asyncio.sleep(self.cfg.heartbeat_s)
        finally:
            with contextlib.suppress(StoreUnavailable, StoreRejected, TimeoutError):
                async with asyncio.timeout(self.cfg.heartbeat_s):
                    await forget(self.store, self.cfg.client_id)

    # ---- housekeeping ------------------------------------------------------------------------

    async def _prune_ledger(self, now: int) -> None:
        """Published transitions are kept as long as the registry keeps message ids."""
        if self.ledger is None:
            return
        try:
            await self.ledger.prune(now - self.cfg.seen_retention_s * 1000)
        except LocalStoreError as exc:
            logger.warning("housekeeping skipped: %s", exc)

    async def _audit_loop(self) -> None:
        """Every ``gap_audit_s``: audit the numbers received ``gap_settle_s`` ago or earlier
        (every member has committed its share by then) for gaps; see ``device_registry.ingest.seqaudit``."""
        since = self.clock() - 2 * int(self.cfg.gap_settle_s * 1000)  # streams live at start
        while True:
            await asyncio.sleep(self.cfg.gap_audit_s)
            settled = self.clock() - int(self.cfg.gap_settle_s * 1000)
            try:
                gaps = await self.store.audit_sequences(since, settled)
            except StoreUnavailable as exc:  # one line per outage, not one per audit
                self._audit_outage.failed(exc)
                continue
            self._audit_outage.ok()
            # overlapping windows: a stream whose claim lost a race is looked at once more (the
            # ranges audited start where the stored audit stopped, so nothing is counted twice)
            since = settled - int(self.cfg.gap_audit_s * 1000)
            filled = await self._withdraw_filled()
            for gap in gaps:
                self._audit.gaps += len(gap.holes)
                self._audit.missing += gap.missing
                logger.warning(
                    "gateway %s %s stream: %d message(s) never arrived: seq %s (audited "
                    "across the shared subscription); asking the gateway for them again",
                    gap.gateway, gap.stream, gap.missing, _runs(gap.holes),
                )  # fmt: skip
                self._unfilled.append(gap)
            # each open gap costs a look at every audit: the oldest are forgotten (and stay
            # counted missing) past a bound
            del self._unfilled[:-UNFILLED_MAX]
            lane = self._lanes.get("events") or next(iter(self._lanes.values()), None)
            await self._ask_again(lane, {(g.gateway, g.stream): list(g.holes) for g in gaps})
            if gaps or filled:
                async with self._progress:
                    self._progress.notify_all()

    async def _withdraw_filled(self) -> int:
        """The numbers this member reported missing that have arrived since (a stopped member's
        turn delivered when it is back, a gateway's answer to the Repair): no longer counted
        missing, here and in the registry, and said at INFO. Returns how many."""
        total, still = 0, list[Gap]()
        for i, gap in enumerate(self._unfilled):
            try:
                left, filled = await self.store.withdraw_filled(gap)
            except StoreUnavailable as exc:
                logger.debug("filled gaps not looked for: %s", exc)
                self._unfilled = still + self._unfilled[i:]  # the next audit looks again
                return total
            if filled:
                total += len(filled)
                self._audit.gaps -= closed(gap.holes, left.holes if left else ())
                self._audit.missing -= len(filled)
                self._audit.repaired += len(filled)
                logger.info(
                    "gateway %s %s stream: %d message(s) reported never arrived came after all: "
                    "seq %s; no longer counted missing (%d still missing there)",
                    gap.gateway, gap.stream, len(filled), _runs(_as_runs(filled)),
                    left.missing if left else 0,
                )  # fmt: skip
            if left is not None:
                still.append(left)
        self._unfilled = still
        return total

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
                self._housekeeping_outage.failed(exc)
                continue
            self._housekeeping_outage.ok()
            await self._prune_ledger(now)
            if self.claims is not None:
                self.claims.book.prune(now)
            rate = (self.stats.points_written - last) / self.cfg.maintenance_s
            last = self.stats.points_written
            logger.info(
                "bridge: %.0f points/s; pruned %d ids; %s", rate, pruned, self.stats.as_dict()
            )
