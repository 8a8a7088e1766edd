"""The registry's own MQTT session: down the tree (configs, commands, broker control), and the
answers that come back up (config acks, command results, control responses).

Why here and not in the bridge: these are the registry's requests and their answers, they are
few, and the registry needs a broker session to send them anyway (also when it runs alone,
``registry serve``, without a bridge). The session is persistent (fixed client id, no clean
start), so answers sent while the registry was away are delivered when it is back; on every
connect it republishes the configs that are not acknowledged yet (retained, QoS 1: the edge
acknowledges a version it already runs without re-applying it).

The session must always come back: while it is down, registering, retiring, rotating passwords
and commands answer 503, so a stolen gateway that could end it would block its own revocation.
It runs on ``gridwatch.ground.mqttsession`` (reconnects forever, within about a second of the
broker's return), and a message it cannot read or store is logged (once per topic at WARNING),
counted in ``dropped`` and dropped: it never ends the session.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiomqtt
from pydantic import ValidationError

from device_registry.errors import BrokerUnavailable, RegistryError
from device_registry.inventory.provisioning import refused_login
from gridwatch.ground.contract import Command, CommandResult, ConfigAck, ConfigPush, Topics
from gridwatch.ground.endpoints import parse_endpoints
from gridwatch.ground.mqttsession import MqttSession, SessionSettings, first_failure

logger = logging.getLogger(__name__)

CONTROL = "$CONTROL/dynamic-security/v1"
CONTROL_RESPONSE = f"{CONTROL}/response"
_CONTROL_TIMEOUT_S = 5.0
_CONNECT_WAIT_S = 3.0


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    """One broker host, or several written ``host[:port],host[:port]`` (tried in turn)."""
    port: int
    """The port of a broker written without one."""
    prefix: str
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    client_id: str = "gridwatch-registry"
    protocol: Literal["auto", "5", "3.1.1"] = "auto"

    def __repr__(self) -> str:  # the password never reaches a log line or a traceback
        return f"BrokerSettings({self.username}@{self.host}:{self.port}, prefix={self.prefix!r})"


def _session_settings(s: BrokerSettings, topics: Topics) -> SessionSettings:
    return SessionSettings(
        endpoints=parse_endpoints(s.host, s.port, s.tls), client_id=s.client_id,
        username=s.username, password=s.password, ca_file=s.ca_file, protocol=s.protocol,
        subscriptions=((topics.all_gateways("config/ack"), 1),
                       (topics.all_gateways("cmd/result"), 1), (CONTROL_RESPONSE, 1)),
    )  # fmt: skip


ConfigSource = Callable[[str], Awaitable[tuple[int, dict[str, Any] | None]]]
"""gateway -> (version, config document); None: retired, clear its retained config."""


class Downlink:
    def __init__(
        self, settings: BrokerSettings, config_of: ConfigSource,
        pending: Callable[[], Awaitable[list[str]]],
        on_ack: Callable[[ConfigAck], Awaitable[None]],
        on_result: Callable[[CommandResult], Awaitable[None]],
        clock: Callable[[], int],
    ) -> None:  # fmt: skip
        self.settings, self.topics = settings, Topics(settings.prefix)
        self.config_of, self.pending = config_of, pending
        self.on_ack, self.on_result, self.clock = on_ack, on_result, clock
        self.connected = asyncio.Event()
        """The session is up (what the setup step needs)."""
        self.ready = asyncio.Event()
        """Up and set up (``on_connect`` done): what every other request waits for."""
        self.on_connect: Callable[[], Awaitable[None]] | None = None
        self.session = MqttSession(
            _session_settings(settings, self.topics), "registry downlink",
            explain=lambda code, at: refused_login(settings.username, str(at), code),
        )  # fmt: skip
        self.dropped = 0
        """Messages on our topics that could not be read or stored (dropped, logged)."""
        self._dropped_on: set[str] = set()  # topics already logged at WARNING
        self._client: aiomqtt.Client | None = None
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    # ---- what the registry calls -------------------------------------------------------------

    def push(self, gateway: str) -> None:
        """Publish this gateway's current config soon (coalesced; the newest version wins)."""
        self._dirty.add(gateway)
        self._wake.set()

    async def command(self, gateway: str, cmd: Command) -> None:
        await self._publish(self.topics.command(gateway), cmd.model_dump_json().encode(), False)

    async def control(
        self, commands: list[dict[str, Any]], setup: bool = False
    ) -> list[dict[str, Any]]:
        """Run dynamic-security commands; their responses, in order (each may carry 'error').
        ``setup``: from the ``on_connect`` step, which runs before the session is ready."""
        futures = []
        for c in commands:
            c["correlationData"] = uuid.uuid4().hex
            futures.append(asyncio.get_running_loop().create_future())
            self._waiting[c["correlationData"]] = futures[-1]
        try:
            await self._publish(CONTROL, json.dumps({"commands": commands}).encode(), False, setup)
            async with asyncio.timeout(_CONTROL_TIMEOUT_S):
                return list(await asyncio.gather(*futures))
        except TimeoutError:
            raise BrokerUnavailable(
                "the broker did not answer a dynamic-security request: is the plugin loaded and "
                f"may {self.settings.username!r} use {CONTROL}?"
            ) from None
        finally:
            for c in commands:
                self._waiting.pop(c["correlationData"], None)

    async def _publish(self, topic: str, payload: bytes, retain: bool, setup: bool = False) -> None:
        try:  # a reconnect in progress is worth a short wait, an outage is not
            async with asyncio.timeout(_CONNECT_WAIT_S):
                await (self.connected if setup else self.ready).wait()
        except TimeoutError:
            raise BrokerUnavailable(
                "not connected to the broker (its address is in the log)"
            ) from None
        client = self._client
        assert client is not None
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=10)
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailable(f"publish to {topic} failed: {exc}") from exc

    # ---- the session -------------------------------------------------------------------------

    async def run(self) -> None:
        await self.session.run(self._serve)

    async def _serve(self, client: aiomqtt.Client) -> None:
        self._client = client
        self.connected.set()
        try:
            await first_failure(self._read(client), self._set_up_and_push())
        finally:
            self.ready.clear()
            self.connected.clear()
            self._client = None

    async def _set_up_and_push(self) -> None:
        if self.on_connect is not None:
            await self.on_connect()
        self.ready.set()
        try:
            self._dirty.update(await self.pending())
        except RegistryError as exc:  # the database is down: the next change pushes again
            logger.error("registry downlink: unacknowledged configs not republished: %s", exc)
        self._wake.set()
        await self._push_loop()

    async def _read(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
            topic = msg.topic.value
            try:
                await self._dispatch(topic, payload)
            except (ValueError, ArithmeticError, RegistryError) as exc:
                # a gateway's garbage (or a value the database cannot hold) ends this message,
                # never the session: the session is what revokes a stolen gateway
                self._drop(topic, exc)

    def _drop(self, topic: str, exc: Exception) -> None:
        self.dropped += 1
        first = topic not in self._dropped_on
        self._dropped_on.add(topic)
        why = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
        logger.log(logging.WARNING if first else logging.DEBUG,
                   "registry downlink: dropped a message on %s it cannot read or store (%d "
                   "dropped so far): %s", topic, self.dropped, why[:300])  # fmt: skip

    async def _dispatch(self, topic: str, payload: bytes) -> None:
        if topic == CONTROL_RESPONSE:
            answer = json.loads(payload)
            responses = answer.get("responses", []) if isinstance(answer, dict) else []
            for r in responses if isinstance(responses, list) else []:
                fut = (
                    self._waiting.get(r.get("correlationData", "")) if isinstance(r, dict) else None
                )
                if fut is not None and not fut.done():
                    fut.set_result(r)
            return
        where = self.topics.parse_gateway_topic(topic)
        if where is None:
            return
        gateway, leaf = where
        if leaf == "config/ack":
            ack = ConfigAck.model_validate_json(payload)
            if ack.gateway == gateway:  # the topic is what the broker ACL vouches for
                await self.on_ack(ack)
        elif leaf == "cmd/result":
            result = CommandResult.model_validate_json(payload)
            if result.gateway == gateway:
                await self.on_result(result)

    async def _push_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                gateway = self._dirty.pop()
                try:
                    await self._push_one(gateway)
                except BrokerUnavailable as exc:
                    self._dirty.add(gateway)  # again after the reconnect
                    raise aiomqtt.MqttError(f"config push to {gateway}: {exc}") from exc
                except Exception:  # one gateway's bad row must not stop the others' pushes
                    logger.exception("registry downlink: config of %s not pushed", gateway)

    async def _push_one(self, gateway: str) -> None:
        version, doc = await self.config_of(gateway)
        topic = self.topics.config(gateway)
        if doc is None:
            await self._publish(topic, b"", retain=True)  # retired: nothing retained for it
            logger.info("registry downlink: cleared the retained config of %s", gateway)
            return
        push = ConfigPush(gateway=gateway, version=version, config=doc, ts=self.clock())
        await self._publish(topic, push.model_dump_json().encode(), retain=True)
        logger.info("registry downlink: config v%d pushed to %s", version, gateway)
