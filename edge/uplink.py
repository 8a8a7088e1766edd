"""The uplink: drains the outbox to the central broker over MQTT, QoS 1.

On every connection it takes a new session number, publishes a retained Birth on the status topic
and leaves a retained Death as its last will, so the centre marks the gateway's devices stale the
moment the connection drops. With ``mqtt.ack: centre`` (the default) a message's PUBACK only marks
it sent in the outbox: it is forgotten when the centre's ``Ack`` (``P/gw/G/ack``) names it, and sent
again after a reconnect or when no Ack came within ``ack_timeout_s`` (doubled while the centre stays
silent, so a centre that is down is not flooded with the same backlog), or at once when an Ack
names a later number of the same stream than one sent more than ``HOLE_GRACE_S`` before it and
still unacknowledged (it was lost on the way: the centre is back, no need to wait); a ``Repair``
(``P/gw/G/repair``) queues the numbers the centre never received again. A gateway kept waiting
longer than ``WAIT_WARN_S`` says so once at WARNING (and in its health report), and at INFO when
acknowledgements resume. With ``mqtt.ack: broker`` a message is deleted at its PUBACK. A lost
connection is retried by ``gridwatch.ground.mqttsession`` with the one jittered exponential backoff
capped at one second, so the uplink is back within about a second of the broker's return; with
``protocol: auto`` it falls back to MQTT 3.1.1 when the broker refuses (or ignores) MQTT 5.

With several brokers (``mqtt.endpoints``, the nodes of a cluster) a lost connection moves the
uplink to the next one, where it starts a new session with its Birth. A clean stop (SIGTERM,
Ctrl-C) publishes the session's Death itself and waits for its PUBACK (at most two seconds)
before it disconnects: a broker drops the will of a client that says goodbye, and the gateway
would read "online" until its health reports went missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Coroutine
from typing import Any

import aiomqtt
from pydantic import ValidationError

from edge.outbox import Outbox, Waiting
from edge.pipeline import Pipeline
from gridwatch import __version__
from gridwatch.ground.backoff import Backoff
from gridwatch.ground.contract import (
    STREAMS,
    Ack,
    Birth,
    Death,
    DeviceInfo,
    Repair,
    Topics,
)
from gridwatch.ground.gatewayconf import MqttUplink
from gridwatch.ground.mqttsession import Endpoint, MqttSession, SessionSettings, first_failure

BACKOFF_FIRST_S = 0.05
BACKOFF_CAP_S = 1.0

logger = logging.getLogger(__name__)

WINDOW = 200  # messages in flight at once
HOUSEKEEPING_S = 1.0  # how often the ack timeout, the retention and the wait are looked at
PRUNE_EVERY = 5  # looks between two scans of the retention and the wait
RESEND_CAP_S = 300.0  # the longest the ack timeout doubles to while the centre is silent
WAIT_WARN_S = 60.0
HOLE_GRACE_S = 2.0  # how much later a sibling bridge of a shared subscription may ack
"""Waiting longer than this (or four ack timeouts, if longer) for the centre is worth a WARNING."""


class Uplink:
    def __init__(
        self,
        cfg: MqttUplink,
        gateway_id: str,
        outbox: Outbox,
        pipeline: Pipeline,
        topics: Topics,
        config_version: int,
        clock: Callable[[], float],
    ) -> None:
        self.cfg, self.gateway_id, self.outbox, self.pipeline = cfg, gateway_id, outbox, pipeline
        self.topics, self.config_version, self.clock = topics, config_version, clock
        self.wakeup = asyncio.Event()
        self.published = 0
        self._session = 0  # the session number of the current (or next) connection
        # configuration pushes and commands from the centre: (topic leaf, payload)
        self.on_down: Callable[[str, bytes], Coroutine[Any, Any, None]] | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        # the streams that wait for the centre's Ack: none when the PUBACK is enough
        self._awaits = frozenset(STREAMS) if cfg.ack == "centre" else frozenset[str]()
        self.acked = 0  # messages the centre's Acks named
        self.repaired = 0  # messages queued again for a Repair
        self.waiting = Waiting(0, None)  # as of the last look
        self._resend_after = cfg.ack_timeout_s
        self._heard = False  # an Ack came since the last resend
        self._warned = False
        self._housekept = 0.0
        self._looks = 0
        self.mqtt = MqttSession(self._settings(), "uplink", will=self._will,
                                farewell=self._farewell)  # fmt: skip
        self.watch = self.mqtt.watch  # changes on connect, failure and every acknowledged window

    @property
    def connected(self) -> bool:
        """Connected and the Birth of this session sent (what the centre sees as online)."""
        return self.mqtt.state.connected and self.pipeline.uplink_up

    @property
    def reconnects(self) -> int:
        """Outages of the connection so far."""
        return self.mqtt.state.outages

    async def wait_until(self, predicate: Callable[[Uplink], bool], within_s: float) -> None:
        await self.watch.until(lambda: predicate(self), within_s)

    def notify(self) -> None:
        """Called when something was queued: wake the sender."""
        self.wakeup.set()

    async def run(self) -> None:
        await self.mqtt.run(self._serve)

    def _settings(self) -> SessionSettings:
        c = self.cfg
        return SessionSettings(
            endpoints=tuple(Endpoint(b.host, b.port, bool(b.tls)) for b in c.brokers()),
            client_id=f"gridwatch-edge-{self.gateway_id}",
            username=c.username or self.gateway_id, password=c.password(), ca_file=c.ca_file,
            protocol=c.protocol, persistent=False, keepalive_s=c.keepalive_s,
            max_inflight=WINDOW, backoff_first_s=BACKOFF_FIRST_S, backoff_cap_s=BACKOFF_CAP_S,
        )  # fmt: skip

    async def _will(self) -> aiomqtt.Will:
        """A new session number for each connection, and its Death as the last will."""
        waits = Backoff(first_s=1.0, cap_s=5.0)
        while True:
            try:
                self._session = self.outbox.next_session()
                break
            except sqlite3.Error as exc:  # disk full: no new session can be recorded yet
                logger.error("uplink waits: cannot record a new session: %s", exc)
                await asyncio.sleep(waits.next())
        return aiomqtt.Will(self.topics.status(self.gateway_id), self._death(), qos=1, retain=True)

    def _death(self) -> str:
        return Death(gateway=self.gateway_id, session=self._session).model_dump_json()

    async def _farewell(self, client: aiomqtt.Client) -> None:
        """A clean stop: the Death the will would have carried, retained, acknowledged."""
        self.pipeline.uplink_up = False
        await client.publish(self.topics.status(self.gateway_id), self._death(), qos=1,
                             retain=True)  # fmt: skip
        logger.info("uplink: stopped; session %d ended with its Death", self._session)

    async def _serve(self, client: aiomqtt.Client) -> None:
        try:
            await self._on_connected(client, self._session)
            await first_failure(self._drain_forever(client), self._read_down(client))
        finally:
            self.pipeline.uplink_up = False

    async def _on_connected(self, client: aiomqtt.Client, session: int) -> None:
        birth = Birth(
            gateway=self.gateway_id, session=session, ts=int(self.clock() * 1000),
            software=f"gridwatch {__version__}", config_version=self.config_version,
            devices=sorted(self.pipeline.devices),
            device_info=[DeviceInfo(device=d.id, profile=d.profile.id, interval_s=d.interval_s,
                                    location=d.location)
                         for d in self.pipeline.devices.values()],
        )  # fmt: skip
        # subscribed before the Birth: what the centre sends once it sees the gateway online
        # (a command, an Ack of the messages resent below) must not reach a session without
        # the subscription (a clean session keeps nothing for it)
        leaves = (["ack", "repair"] if self._awaits else []) + (
            ["config", "cmd"] if self.on_down is not None else []
        )
        if leaves:
            await client.subscribe(
                [(self.topics.gateway(self.gateway_id, leaf), 1) for leaf in leaves]
            )
        await client.publish(
            self.topics.status(self.gateway_id), birth.model_dump_json(), qos=1, retain=True
        )
        self.pipeline.session = session
        self.pipeline.uplink_up = True
        logger.info("uplink: session %d on %s", session, self.mqtt.state.endpoint)
        self.watch.changed()

    async def _read_down(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            parsed = self.topics.parse_gateway_topic(str(msg.topic))
            if parsed is None or not isinstance(msg.payload, bytes):
                continue
            if parsed[1] in ("ack", "repair") and self._awaits:
                self._from_centre(parsed[1], msg.payload)
                continue
            if self.on_down is None:
                continue
            # a slow command must not hold up the next message
            task = asyncio.create_task(
                self.on_down(parsed[1], msg.payload), name=f"down:{parsed[1]}"
            )
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)

    def _from_centre(self, leaf: str, payload: bytes) -> None:
        """An Ack or a Repair: a quick outbox update on the reading task."""
        try:
            msg = (Ack if leaf == "ack" else Repair).model_validate_json(payload)
        except ValidationError as exc:
            logger.warning("uplink: unreadable %s from the centre ignored: %s", leaf, exc)
            return
        if msg.gateway != self.gateway_id:
            return
        try:
            if isinstance(msg, Ack):
                self._acked(msg)
            else:
                self._repair(msg)
        except sqlite3.Error as exc:  # disk full: the message is sent again, and acked again
            logger.error("outbox cannot record the centre's %s: %s", leaf, exc)
        self.watch.changed()

    def _acked(self, ack: Ack) -> None:
        now = self.clock()
        again = 0
        for stream, runs in ack.streams.items():
            self.acked += self.outbox.ack(stream, runs, now)
            # an earlier number still unacknowledged, sent HOLE_GRACE_S before, was lost on the
            # way (the centre was back before the broker replayed it, or the broker crashed with
            # it): it goes now, not at the ack timeout, which has grown while the centre was away
            first = min(lo for lo, _ in runs)
            again += self.outbox.resend_below(stream, first, now - HOLE_GRACE_S)
        if again:
            logger.debug("uplink: %d message(s) before the acknowledged ones sent again", again)
            self.wakeup.set()
        self._heard = True
        self._resend_after = self.cfg.ack_timeout_s
        if self._warned:
            self._warned = False
            logger.info("uplink: the centre acknowledges again")

    def _repair(self, repair: Repair) -> None:
        found = self.outbox.repair(repair.stream, repair.ranges)
        wanted = sum(last - first + 1 for first, last in repair.ranges)
        self.repaired += found
        logger.info(
            "uplink: the centre asked for %d %s message(s) again (seq %s); %d still held, sent "
            "again", wanted, repair.stream, _runs(repair.ranges), found,
        )  # fmt: skip
        if found:
            self.wakeup.set()

    def _housekeeping(self) -> None:
        """Once a second at most: resend what the centre did not acknowledge in time, forget
        what the retention for repair no longer covers, warn about a silent centre."""
        now = self.clock()
        if not self._awaits or now - self._housekept < HOUSEKEEPING_S:
            return
        self._housekept = now
        again = self.outbox.resend(sent_before=now - self._resend_after)
        if again:
            logger.debug("uplink: %d message(s) not acknowledged within %.0f s, sent again",
                         again, self._resend_after)  # fmt: skip
            if not self._heard:  # the centre is silent: do not flood it with the same backlog
                self._resend_after = min(
                    self._resend_after * 2, max(RESEND_CAP_S, self.cfg.ack_timeout_s)
                )
            self._heard = False
        self._looks += 1
        if self._looks % PRUNE_EVERY:
            return
        # these scan every acknowledged (or sent) row: not at every look
        self.outbox.prune_acked(now - self.outbox.keep_acked_s)
        self.waiting = self.outbox.waiting(now)
        bound = max(WAIT_WARN_S, 4 * self.cfg.ack_timeout_s)
        oldest = self.waiting.oldest_s
        if oldest is not None and oldest > bound and not self._warned:
            self._warned = True
            logger.warning(
                "uplink: %d message(s) delivered to the broker are not acknowledged by the "
                "centre, the oldest for %.0f s; they are kept and sent again (is the centre's "
                "bridge running? a centre that never acknowledges needs mqtt.ack: broker)",
                self.waiting.count, oldest,
            )  # fmt: skip

    async def _drain_forever(self, client: aiomqtt.Client) -> None:
        if self._awaits:  # the Acks of the old connection are lost with it
            self.outbox.resend()
        while True:
            self.wakeup.clear()
            self._housekeeping()
            batch = self.outbox.peek(WINDOW)
            if not batch:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow a
                # cancellation that comes as the event is set, and the agent never stops
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HOUSEKEEPING_S):
                        await self.wakeup.wait()
                continue
            results = await asyncio.gather(
                *(client.publish(m.topic, m.payload, qos=1) for m in batch),
                return_exceptions=True,
            )
            done = [
                m for m, r in zip(batch, results, strict=True) if not isinstance(r, BaseException)
            ]
            try:
                self.outbox.sent([m.id for m in done if m.stream in self._awaits], self.clock())
                self.outbox.delete([m.id for m in done if m.stream not in self._awaits])
            except sqlite3.Error as exc:  # disk full: they go again; the bridge drops repeats
                logger.error("outbox cannot record %d acknowledged messages: %s", len(done), exc)
                await asyncio.sleep(1.0)
                continue
            self.published += len(done)
            self.watch.changed()
            for r in results:
                if isinstance(r, BaseException):
                    raise r


def _runs(ranges: list[tuple[int, int]]) -> str:
    shown = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges[:10])
    return shown + (", ..." if len(ranges) > 10 else "")
