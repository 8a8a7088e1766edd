"""One MQTT session that always comes back: connect, subscribe, serve, and after any loss do it
again, forever, with the one backoff (``gridwatch.ground.backoff``).

Every long-lived MQTT client of the central side and of the edge's uplink runs on it: the edge's
uplink, the bridge's two lanes, the registry's downlink and its platform publisher. (The edge's
MQTT *sensor* driver, ``drivers/mqtt.py``, listens to a field broker with a loop of its own, paced
by the same backoff: it is a driver, below the ground's session, and reports per device.) Each of them gives ``run`` a ``serve``
coroutine that uses the connected aiomqtt client until the connection fails (it raises
``aiomqtt.MqttError``); the session then reconnects, subscribes again and calls ``serve`` again.
Only cancellation ends ``run``: any other error of ``serve`` is a bug, logged with its traceback,
and the session reconnects (for the registry's downlink, a session that stays down means every
registration and revocation answers 503).

Why no ``asyncio.TaskGroup`` around ``serve``: on Python 3.11, a task group whose child fails
after the body has finished leaves the *parent* task's cancellation count at 1 (the group cancels
the parent and never uncancels it). A reconnect loop that asks ``task.cancelling()`` whether it
was told to stop then stops after an ordinary broker restart: that is how the registry's
downlink died after every restart (issue 16). ``first_failure`` runs parallel jobs without it.

Several brokers (the nodes of a broker cluster): ``endpoints`` lists them, and after a failed
connect *or a lost connection* the session tries the next one, round robin, so a client keeps
working when one node dies and comes back to it when another does. The one backoff is applied per
attempt, not per full round: each connect, to whichever broker, waits its jittered delay first.
Why: a whole fleet that loses the same node moves to the survivors spread over the jitter instead
of in one burst, and the failover still costs only the first delays (50 ms, then 100 ms, ...: well
under a second), while a round of brokers that are all down takes no longer than ``len(endpoints)``
times the cap. A lost connection moves on too (rather than trying the lost node again first): a
node that crashed is the likeliest to still be down. Subscriptions are made again on every
connect, so a broker that holds no session for us (a failover, a node that lost its state) gets
them all the same.

The MQTT version: ``"auto"`` starts with MQTT 5 and, until a connection to that broker succeeds,
falls back to 3.1.1 at once, in the same attempt, when the broker says it does not speak 5
(CONNACK code 1 in 3.1.1, 132 in MQTT 5) or reached over TCP does not answer an MQTT 5 CONNECT at
all (amqtt, the demo's broker) within ``probe_s`` (2 s, not the full ``timeout_s``: that silence is
the fallback's whole cost; a slow MQTT 5 broker then gets the 3.1.1 CONNECT, which it takes too). The decision (``fall_back``) is taken from codes and types, never
from message text, and the version learnt is kept per broker. A fallback that works is no outage:
it is logged at INFO; only when the fallback fails too is the outage's ERROR logged.

Logging follows the house rule: the first failure of an outage at ERROR, repeats at DEBUG, the
recovery at INFO. ``state`` says whether the session is up, since when, on which broker of the
list and the last error, for health reports; ``watch`` wakes waiters on every change.

A clean stop (the task is cancelled while connected) runs the owner's ``farewell`` with the
connected client, bounded by ``farewell_s``, before the DISCONNECT: the edge's uplink publishes its
Death there, because a broker drops the last will of a client that disconnects cleanly.

A session owns its subscriptions. A persistent session keeps at the broker whatever it ever
subscribed to, and subscribing to something new removes nothing: a bridge once run without a
share group and then with one kept its plain subscription for the session's 7 days and took the
whole stream besides its share (issue 17). MQTT has no "list my subscriptions", so the session
notes what it subscribes to in ``note_file`` (written before the SUBSCRIBE, so a crash in
between leaves a note that says too much, never too little), and when the CONNACK says the broker
resumed the session (``session present``) it first unsubscribes what it noted or ``may_hold``
lists and no longer wants (``stale_filters``). Unsubscribing a filter the session does not hold
is harmless (MQTT 5 answers "no subscription existed"), so ``may_hold`` covers a lost note: the
forms of each filter an earlier configuration could have used. One note per client id, not per
broker: the brokers of a cluster share the sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import ssl
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NoReturn

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gridwatch.ground.backoff import Backoff
from gridwatch.ground.endpoints import Endpoint
from gridwatch.ground.watch import Watch

logger = logging.getLogger(__name__)

Protocol = Literal["auto", "5", "3.1.1"]
Version = Literal["5", "3.1.1"]

UNSUPPORTED_VERSION = frozenset({1, 132})
"""CONNACK codes for "not this protocol version": 1 in MQTT 3.1.1, 132 in MQTT 5."""
SESSION_EXPIRY_S = 7 * 24 * 3600


@dataclass(frozen=True)
class SessionSettings:
    endpoints: tuple[Endpoint, ...]
    """Brokers to try in turn (each with its own TLS switch); a failed connect or a lost
    connection moves on to the next one."""
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line
    ca_file: str | None = None
    """CA bundle for the brokers that use TLS (the system's when None)."""
    protocol: Protocol = "auto"
    persistent: bool = True
    """Keep the session across connections (no clean start; MQTT 5: ``session_expiry_s``), so
    QoS 1 messages sent while we were away are delivered when we are back."""
    session_expiry_s: int = SESSION_EXPIRY_S
    receive_maximum: int | None = None
    """MQTT 5: unacknowledged messages the broker may send us at once."""
    manual_ack: bool = False
    """Acknowledge received messages with ``ack`` (after they are stored), not on receipt."""
    subscriptions: tuple[tuple[str, int], ...] = ()
    """(filter, QoS), subscribed on every connect before ``serve`` runs."""
    note_file: Path | None = None
    """Where the filters subscribed to are noted (``subscriptions_note``), so that a resumed
    session drops what an earlier run subscribed to and this one does not want; None: no note
    (only ``may_hold`` is dropped)."""
    may_hold: tuple[str, ...] = ()
    """Filters an earlier configuration of this client may have left in its session (the plain
    form of a filter now shared, the shared form of one now plain): unsubscribed on a resumed
    session unless wanted now, whatever the note says."""
    keepalive_s: int = 30
    timeout_s: float = 5.0
    """For the CONNACK and every awaited call of aiomqtt."""
    probe_s: float = 2.0
    """``protocol: auto``, a broker whose version is not learnt yet: the wait for the answer to
    the first MQTT 5 CONNECT. A 3.1.1-only broker (amqtt) never answers it, so this is what the
    fallback costs; the 3.1.1 CONNECT, and brokers known to speak 5, get ``timeout_s``."""
    max_inflight: int = 100
    backoff_first_s: float = 0.05
    backoff_cap_s: float = 1.0
    farewell_s: float = 2.0
    """Bound on the owner's ``farewell`` at a clean stop (a stop must not hang on a broker)."""

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError(f"MQTT session {self.client_id!r}: no broker endpoint given")
        if len(set(self.endpoints)) != len(self.endpoints):
            raise ValueError(f"MQTT session {self.client_id!r}: a broker is listed twice")


@dataclass
class SessionState:
    """What a health report says about the session."""

    connected: bool = False
    since: float | None = None
    """Wall-clock time of the last change between up and down; None: never tried yet."""
    last_error: str | None = None
    endpoint: str | None = None
    """The current (or last) broker's address, for the log."""
    broker: int | None = None
    """Its position in the list of brokers, from 1, while connected (what a public health check
    may show); None while down."""
    brokers: int = 1
    """How many brokers the list has."""
    version: Version | None = None
    """The MQTT version of the current (or last) connection."""
    outages: int = 0
    """Outages so far (a lost connection or a failed first connect; repeats count once)."""

    def report(self) -> dict[str, Any]:
        """What a public health check may show: up or down, since when, and on which broker of
        the list (its position, from 1), never the broker's address or its error text (those are
        in the process's log)."""
        return {"connected": self.connected, "since": self.since, "outages": self.outages,
                "broker": self.broker, "brokers": self.brokers}  # fmt: skip

    @property
    def failing(self) -> bool:
        """Down after having tried: not merely still starting up."""
        return not self.connected and self.since is not None


def refused_filters(
    subscriptions: Sequence[tuple[str, int]], granted: Sequence[object]
) -> list[str]:
    """The filters a SUBACK refused, each with its code: 0x80 and up is a refusal (a granted QoS
    in MQTT 3.1.1, a reason code in MQTT 5; mosquitto's dynamic security answers 0x87, "not
    authorized", for a filter its ACL does not allow, and the connection stays up)."""
    out = []
    for (topic_filter, _), code in zip(subscriptions, granted, strict=False):
        value = int(getattr(code, "value", code))  # type: ignore[call-overload]
        if value >= 0x80:
            out.append(f"{topic_filter} (0x{value:02x})")
    return out


def stale_filters(
    wanted: Iterable[str], noted: Iterable[str], may_hold: Iterable[str]
) -> list[str]:
    """What a resumed session unsubscribes: what it noted or may hold, less what it wants."""
    return sorted({*noted, *may_hold} - set(wanted))


def subscriptions_note(folder: Path, client_id: str) -> Path:
    """The note of ``client_id``'s subscriptions in ``folder`` (a client id may hold any
    character: it is quoted into the file name, one file per id)."""
    return folder / "mqtt-subscriptions" / f"{urllib.parse.quote(client_id, safe='')}.json"


def read_note(path: Path) -> set[str]:
    """The filters noted in ``path``; none when there is no note (a first start, a lost data
    dir). An unreadable note is said once and taken as none: ``may_hold`` still applies."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return set()
    except (OSError, ValueError) as exc:
        logger.warning("%s: cannot read the note of subscriptions (%s); dropping only the "
                       "filters this client may hold", path, exc)  # fmt: skip
        return set()
    filters = doc.get("filters") if isinstance(doc, dict) else None
    if not isinstance(filters, list) or not all(isinstance(f, str) for f in filters):
        logger.warning("%s: not a note of subscriptions (no list of filters); ignored", path)
        return set()
    return set(filters)


def write_note(path: Path, filters: Iterable[str]) -> None:
    """Replace the note, durably (written aside, synced, renamed over): a note that outlives a
    power cut half-written would hide what the session holds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"filters": sorted(set(filters))}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def connack_code(exc: BaseException) -> int | None:
    """The code the broker answered with (CONNACK or DISCONNECT); None when it answered nothing."""
    if not isinstance(exc, aiomqtt.MqttCodeError) or exc.rc is None:
        return None
    return exc.rc if isinstance(exc.rc, int) else int(exc.rc.value)


def fall_back(code: int | None, reached: bool) -> bool:
    """Should a connect that failed with CONNACK ``code`` (None: no CONNACK) try the other MQTT
    version? ``reached``: the TCP connection was made (else the broker is simply not there)."""
    if code is not None:
        return code in UNSUPPORTED_VERSION
    return reached  # connected and not answered: a broker that ignores this version's CONNECT


async def first_failure(*jobs: Coroutine[Any, Any, None]) -> None:
    """Run jobs together until one ends; cancel the rest, then re-raise its error (see the
    module docstring for why this is not a TaskGroup)."""
    tasks = [asyncio.create_task(j) for j in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    for t in done:
        t.result()


async def _until_lost(client: aiomqtt.Client) -> None:
    """Raise the connection's loss as soon as paho reports it: a ``serve`` that waits on
    something else (the platform publisher on its feed) would otherwise notice only at its next
    publish, and the state would say "connected" until then."""
    await asyncio.shield(client._disconnected)  # aiomqtt sets it (with the error) on a loss


def ack(client: aiomqtt.Client, mid: int, qos: int) -> None:
    """Acknowledge one received message of a ``manual_ack`` session."""
    if qos > 0:
        client._client.ack(mid, qos)  # paho's manual ack, which aiomqtt does not expose


Serve = Callable[[aiomqtt.Client], Coroutine[Any, Any, None]]


class _NotOpened(Exception):
    """A connect that failed, with what ``fall_back`` decides on (read before the socket is
    closed); never leaves this module: ``error`` is raised in its place."""

    def __init__(self, error: aiomqtt.MqttError, code: int | None, reached: bool) -> None:
        super().__init__(str(error))
        self.error, self.code, self.reached = error, code, reached


class MqttSession:
    """``await MqttSession(settings, "bridge telemetry").run(serve)``: runs until cancelled."""

    def __init__(
        self, settings: SessionSettings, name: str,
        will: Callable[[], Awaitable[aiomqtt.Will | None]] | None = None,
        rng: random.Random | None = None, clock: Callable[[], float] = time.time,
        explain: Callable[[int, Endpoint], str | None] | None = None,
        farewell: Callable[[aiomqtt.Client], Awaitable[None]] | None = None,
    ) -> None:  # fmt: skip
        self.settings, self.name, self.will, self.clock = settings, name, will, clock
        self.explain = explain
        """A refusal's CONNACK code (from that broker) said in the owner's words (what to
        check), or None."""
        self.farewell = farewell
        """What to send at a clean stop, before the DISCONNECT (see the module docstring)."""
        self.backoff = Backoff(
            settings.backoff_first_s, settings.backoff_cap_s, rng=rng or random.Random()
        )
        self.state = SessionState(brokers=len(settings.endpoints))
        self.watch = Watch()
        self.client: aiomqtt.Client | None = None
        """The connected client while the session is up."""
        self._versions: dict[Endpoint, Version] = {}
        """The version each broker was reached with ("auto": learnt on its first connection)."""
        self._next = 0  # index of the endpoint to try next
        self._down = False  # in an outage: repeats of the failure are logged at DEBUG
        self._resumed = False  # the last CONNACK's "session present"

    async def run(self, serve: Serve) -> NoReturn:
        while True:
            endpoint = self.settings.endpoints[self._next % len(self.settings.endpoints)]
            self._next += 1  # after a failed connect or a loss: the next broker of the list
            try:
                client, version = await self._connect(endpoint)
            except aiomqtt.MqttError as exc:
                self._failed(endpoint, exc)
                await asyncio.sleep(self.backoff.next())
                continue
            try:
                await self._serve(client, endpoint, version, serve)
            except asyncio.CancelledError:
                await self._say_farewell(client, endpoint)
                raise
            except aiomqtt.MqttError as exc:
                self._failed(endpoint, exc)
            except Exception as exc:  # the task's outermost loop: a bug must not end the session
                logger.log(logging.DEBUG if self._down else logging.ERROR,
                           "mqtt %s: serving %s failed; reconnecting", self.name, endpoint,
                           exc_info=True)  # fmt: skip
                self._failed(endpoint, exc)
            finally:
                self._went_down()
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.__aexit__(None, None, None)
            await asyncio.sleep(self.backoff.next())

    async def _connect(self, endpoint: Endpoint) -> tuple[aiomqtt.Client, Version]:
        """Connected to ``endpoint``, with the version it speaks; a refused (or ignored) MQTT 5
        CONNECT of ``protocol: auto`` is followed at once by a 3.1.1 one (module docstring)."""
        will = await self.will() if self.will else None
        learnt = self._versions.get(endpoint)
        version = learnt or ("3.1.1" if self.settings.protocol == "3.1.1" else "5")
        probing = not learnt and self.settings.protocol == "auto"
        client = self._client(endpoint, will, version)
        if probing:
            client.timeout = min(self.settings.timeout_s, self.settings.probe_s)
        try:
            await self._open(client)
            client.timeout = self.settings.timeout_s  # connected: every later call gets it
        except _NotOpened as exc:
            if learnt or self.settings.protocol != "auto" or not fall_back(exc.code, exc.reached):
                raise exc.error from None
            logger.debug("mqtt %s: %s did not take an MQTT %s CONNECT (%s); trying the other "
                         "version", self.name, endpoint, version, exc.error)  # fmt: skip
            version = "3.1.1" if version == "5" else "5"
            client = self._client(endpoint, will, version)
            try:
                await self._open(client)
            except _NotOpened as again:  # the fallback failed too: that is the outage's error
                raise again.error from None
            logger.info("mqtt %s: %s speaks MQTT %s only; using it", self.name, endpoint, version)
        self._versions[endpoint] = version
        return client, version

    @staticmethod
    async def _open(client: aiomqtt.Client) -> None:
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            reached = client._client.socket() is not None
            if reached:  # aiomqtt leaves the socket of an unanswered CONNECT open
                client._client.disconnect()
            raise _NotOpened(exc, connack_code(exc), reached) from exc

    async def _serve(
        self, client: aiomqtt.Client, endpoint: Endpoint, version: Version, serve: Serve
    ) -> None:
        await self._own_subscriptions(client)
        if self.settings.subscriptions:  # every connect: this broker may hold no session for us
            granted = await client.subscribe(list(self.settings.subscriptions))
            refused = refused_filters(self.settings.subscriptions, granted)
            if refused:  # a session that hears nothing must not call itself up
                raise aiomqtt.MqttError(
                    f"the broker refused the subscription to {', '.join(refused)}: check the "
                    "account's ACL (a shared subscription needs its $share/GROUP/... filter "
                    "allowed: docs/deploy.md)"
                )
        self._went_up(client, endpoint, version)
        await first_failure(serve(client), _until_lost(client))
        raise aiomqtt.MqttError(f"{self.name}: the session's work ended")  # serve runs forever

    async def _own_subscriptions(self, client: aiomqtt.Client) -> None:
        """Drop from a resumed session what this client no longer wants, then note what it is
        about to subscribe to (module docstring)."""
        s = self.settings
        wanted = [f for f, _ in s.subscriptions]
        noted = read_note(s.note_file) if s.note_file is not None else set()
        if self._resumed:
            stale = stale_filters(wanted, noted, s.may_hold)
            if stale:
                await client.unsubscribe(stale)
                held = [f for f in stale if f in noted]
                if held:  # known to have been held: worth saying (the guesses are not)
                    logger.info("mqtt %s: unsubscribed %s, which an earlier run subscribed to "
                                "and this one does not want", self.name, held)  # fmt: skip
                logger.debug("mqtt %s: unsubscribed (if held) %s", self.name, stale)
        if s.note_file is None or noted == set(wanted):
            return
        try:
            write_note(s.note_file, wanted)
        except OSError as exc:  # the note is an aid: ingest goes on without it
            logger.warning("mqtt %s: cannot note its subscriptions in %s (%s): a later change "
                           "of its filters may leave the old ones in its session", self.name,
                           s.note_file, exc)  # fmt: skip

    async def _say_farewell(self, client: aiomqtt.Client, endpoint: Endpoint) -> None:
        if self.farewell is None or not self.state.connected:
            return
        try:
            async with asyncio.timeout(self.settings.farewell_s):
                await self.farewell(client)
        except (TimeoutError, aiomqtt.MqttError) as exc:
            logger.warning("mqtt %s: stopping without a goodbye on %s: %s", self.name, endpoint,
                           str(exc) or f"no answer within {self.settings.farewell_s} s")  # fmt: skip

    def _went_up(self, client: aiomqtt.Client, endpoint: Endpoint, version: Version) -> None:
        s = self.state
        of = f"broker {self._position(endpoint)} of {s.brokers}, " if s.brokers > 1 else ""
        where = f"{endpoint} ({of}MQTT {version})"
        if not self._down or s.endpoint is None:  # the first connection, perhaps after failures
            logger.info("mqtt %s: connected to %s", self.name, where)
        elif s.endpoint == str(endpoint):
            logger.info("mqtt %s: %s is back", self.name, where)
        else:
            logger.info("mqtt %s: moved to %s; %s is away", self.name, where, s.endpoint)
        self._down = False
        self.client = client
        self.backoff.reset()
        s.connected, s.since, s.version = True, self.clock(), version
        s.endpoint, s.broker = str(endpoint), self._position(endpoint)
        self.watch.changed()

    @property
    def endpoint(self) -> Endpoint | None:
        """The broker the session is connected to; None while it is down."""
        b = self.state.broker
        return self.settings.endpoints[b - 1] if self.state.connected and b else None

    def _position(self, endpoint: Endpoint) -> int:
        return self.settings.endpoints.index(endpoint) + 1

    def _went_down(self) -> None:
        self.client = None
        self.state.broker = None  # on none; ``endpoint`` keeps the last one for the log
        if self.state.connected:
            self.state.connected, self.state.since = False, self.clock()
        self.watch.changed()

    def _failed(self, endpoint: Endpoint, exc: BaseException) -> None:
        s = self.state
        if s.connected or not self._down:
            what = "lost" if s.connected else "cannot connect"
            logger.error("mqtt %s: %s %s: %s", self.name, endpoint, what,
                         self._said(exc, endpoint))  # fmt: skip
            s.outages += 1
        else:
            logger.debug("mqtt %s: %s still down: %s", self.name, endpoint, exc)
        self._down = True
        if s.since is None:
            s.since = self.clock()
        s.last_error = f"{endpoint}: {exc}"
        self.watch.changed()

    def _said(self, exc: BaseException, endpoint: Endpoint) -> str:
        code = connack_code(exc)
        explain = self.explain
        said = explain(code, endpoint) if explain is not None and code is not None else None
        return said or str(exc)

    def _client(
        self, endpoint: Endpoint, will: aiomqtt.Will | None, version: Version
    ) -> aiomqtt.Client:
        s = self.settings
        tls = ssl.create_default_context(cafile=s.ca_file) if endpoint.tls else None
        common: dict[str, Any] = dict(
            identifier=s.client_id, username=s.username, password=s.password, will=will,
            keepalive=s.keepalive_s, timeout=s.timeout_s, max_inflight_messages=s.max_inflight,
            tls_context=tls,
        )  # fmt: skip
        if version == "5":
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            if s.persistent:
                props.SessionExpiryInterval = s.session_expiry_s
            if s.receive_maximum is not None:
                props.ReceiveMaximum = s.receive_maximum
            client = aiomqtt.Client(
                endpoint.host, endpoint.port, protocol=aiomqtt.ProtocolVersion.V5,
                clean_start=not s.persistent, properties=props, **common,
            )  # fmt: skip
        else:
            client = aiomqtt.Client(
                endpoint.host, endpoint.port, protocol=aiomqtt.ProtocolVersion.V311,
                clean_session=not s.persistent, **common,
            )  # fmt: skip
        # a window of calls in flight is the design, not a backlog worth a warning each
        client.pending_calls_threshold = max(s.max_inflight, 10)
        if s.manual_ack:
            client._client.manual_ack_set(True)  # before connecting: no PUBACK on receipt
        self._hear_session_present(client)
        return client

    def _hear_session_present(self, client: aiomqtt.Client) -> None:
        """Keep the CONNACK's "session present" flag, which aiomqtt reads and drops."""
        self._resumed = False
        theirs = client._client.on_connect

        def on_connect(paho: Any, userdata: Any, flags: Any, *rest: Any) -> None:
            self._resumed = bool(getattr(flags, "session_present", False))
            theirs(paho, userdata, flags, *rest)  # type: ignore[misc]

        client._client.on_connect = on_connect


__all__ = [
    "Endpoint",
    "MqttSession",
    "Protocol",
    "SessionSettings",
    "SessionState",
    "Version",
    "ack",
    "connack_code",
    "fall_back",
    "first_failure",
    "read_note",
    "stale_filters",
    "subscriptions_note",
    "write_note",
]
