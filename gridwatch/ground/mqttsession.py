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

The MQTT version: ``"auto"`` starts with MQTT 5 and, until the first connection succeeds, falls
back to 3.1.1 when the broker says it does not speak 5 (CONNACK code 1 in 3.1.1, 132 in MQTT 5)
or reached over TCP does not answer an MQTT 5 CONNECT at all (amqtt, the demo's broker). The
decision (``fall_back``) is taken from codes and types, never from message text.

Logging follows the house rule: the first failure of an outage at ERROR, repeats at DEBUG, the
recovery at INFO. ``state`` says whether the session is up, since when and the last error, for
health reports; ``watch`` wakes waiters on every change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gridwatch.ground.backoff import Backoff
from gridwatch.ground.watch import Watch

logger = logging.getLogger(__name__)

Protocol = Literal["auto", "5", "3.1.1"]
Version = Literal["5", "3.1.1"]

UNSUPPORTED_VERSION = frozenset({1, 132})
"""CONNACK codes for "not this protocol version": 1 in MQTT 3.1.1, 132 in MQTT 5."""
SESSION_EXPIRY_S = 7 * 24 * 3600


@dataclass(frozen=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class SessionSettings:
    endpoints: tuple[Endpoint, ...]
    """Brokers to try in turn; a failed connect moves on to the next one."""
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line
    tls: bool = False
    ca_file: str | None = None
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
    keepalive_s: int = 30
    timeout_s: float = 5.0
    """For the CONNACK and every awaited call of aiomqtt."""
    max_inflight: int = 100
    backoff_first_s: float = 0.05
    backoff_cap_s: float = 1.0

    def __post_init__(self) -> None:
        if not self.endpoints:
            raise ValueError(f"MQTT session {self.client_id!r}: no broker endpoint given")


@dataclass
class SessionState:
    """What a health report says about the session."""

    connected: bool = False
    since: float | None = None
    """Wall-clock time of the last change between up and down; None: never tried yet."""
    last_error: str | None = None
    endpoint: str | None = None
    version: Version | None = None
    """The MQTT version of the current (or last) connection."""
    outages: int = 0
    """Outages so far (a lost connection or a failed first connect; repeats count once)."""

    def report(self) -> dict[str, Any]:
        """What a public health check may show: up or down and since when, never the broker's
        address or its error text (those are in the process's log)."""
        return {"connected": self.connected, "since": self.since, "outages": self.outages}

    @property
    def failing(self) -> bool:
        """Down after having tried: not merely still starting up."""
        return not self.connected and self.since is not None


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


class MqttSession:
    """``await MqttSession(settings, "bridge telemetry").run(serve)``: runs until cancelled."""

    def __init__(
        self, settings: SessionSettings, name: str,
        will: Callable[[], Awaitable[aiomqtt.Will | None]] | None = None,
        rng: random.Random | None = None, clock: Callable[[], float] = time.time,
        explain: Callable[[int], str | None] | None = None,
    ) -> None:  # fmt: skip
        self.settings, self.name, self.will, self.clock = settings, name, will, clock
        self.explain = explain
        """A refusal's CONNACK code said in the owner's words (what to check), or None."""
        self.backoff = Backoff(
            settings.backoff_first_s, settings.backoff_cap_s, rng=rng or random.Random()
        )
        self.state = SessionState()
        self.watch = Watch()
        self.client: aiomqtt.Client | None = None
        """The connected client while the session is up."""
        self._version: Version = "3.1.1" if settings.protocol == "3.1.1" else "5"
        self._learnt = settings.protocol != "auto"
        self._next = 0  # index of the endpoint to try next
        self._down = False  # in an outage: repeats of the failure are logged at DEBUG

    async def run(self, serve: Serve) -> NoReturn:
        while True:
            endpoint = self.settings.endpoints[self._next % len(self.settings.endpoints)]
            client = self._client(endpoint, await self.will() if self.will else None)
            try:
                await self._open(client, endpoint)
            except aiomqtt.MqttError as exc:
                self._next += 1  # the next broker of the list, if there is one
                self._failed(endpoint, exc)
                await asyncio.sleep(self.backoff.next())
                continue
            try:
                await self._serve(client, endpoint, serve)
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

    async def _open(self, client: aiomqtt.Client, endpoint: Endpoint) -> None:
        try:
            await client.__aenter__()
        except aiomqtt.MqttError as exc:
            reached = client._client.socket() is not None
            if reached:  # aiomqtt leaves the socket of an unanswered CONNECT open
                client._client.disconnect()
            if not self._learnt and fall_back(connack_code(exc), reached):
                self._version = "3.1.1" if self._version == "5" else "5"
                logger.info("mqtt %s: %s did not take our CONNECT (%s); next try MQTT %s",
                            self.name, endpoint, exc, self._version)  # fmt: skip
            raise

    async def _serve(self, client: aiomqtt.Client, endpoint: Endpoint, serve: Serve) -> None:
        if self.settings.subscriptions:
            await client.subscribe(list(self.settings.subscriptions))
        self._learnt = True
        self._went_up(client, endpoint)
        await first_failure(serve(client), _until_lost(client))
        raise aiomqtt.MqttError(f"{self.name}: the session's work ended")  # serve runs forever

    def _went_up(self, client: aiomqtt.Client, endpoint: Endpoint) -> None:
        s = self.state
        if self._down:
            logger.info("mqtt %s: %s is back (MQTT %s)", self.name, endpoint, self._version)
        else:
            logger.info("mqtt %s: connected to %s (MQTT %s)", self.name, endpoint, self._version)
        self._down = False
        self.client = client
        self.backoff.reset()
        s.connected, s.since, s.endpoint, s.version = (
            True,
            self.clock(),
            str(endpoint),
            self._version,
        )
        self.watch.changed()

    def _went_down(self) -> None:
        self.client = None
        if self.state.connected:
            self.state.connected, self.state.since = False, self.clock()
        self.watch.changed()

    def _failed(self, endpoint: Endpoint, exc: BaseException) -> None:
        s = self.state
        if s.connected or not self._down:
            what = "lost" if s.connected else "cannot connect"
            logger.error("mqtt %s: %s %s: %s", self.name, endpoint, what, self._said(exc))
            s.outages += 1
        else:
            logger.debug("mqtt %s: %s still down: %s", self.name, endpoint, exc)
        self._down = True
        if s.since is None:
            s.since = self.clock()
        s.last_error = f"{endpoint}: {exc}"
        self.watch.changed()

    def _said(self, exc: BaseException) -> str:
        code = connack_code(exc)
        said = self.explain(code) if self.explain is not None and code is not None else None
        return said or str(exc)

    def _client(self, endpoint: Endpoint, will: aiomqtt.Will | None) -> aiomqtt.Client:
        s = self.settings
        tls = ssl.create_default_context(cafile=s.ca_file) if s.tls else None
        common: dict[str, Any] = dict(
            identifier=s.client_id, username=s.username, password=s.password, will=will,
            keepalive=s.keepalive_s, timeout=s.timeout_s, max_inflight_messages=s.max_inflight,
            tls_context=tls,
        )  # fmt: skip
        if self._version == "5":
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
        return client


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
]
