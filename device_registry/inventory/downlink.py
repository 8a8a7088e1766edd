"""The registry's own MQTT session: down the tree (configs, commands, broker control), and the
answers that come back up (config acks, command results, control responses).

Why here and not in the bridge: these are the registry's requests and their answers, they are
few, and the registry needs a broker session to send them anyway (also when it runs alone,
``registry serve``, without a bridge). The session is persistent (fixed client id, no clean
start), so answers sent while the registry was away are delivered when it is back; on every
connect it republishes the configs that are not acknowledged yet (retained, QoS 1: the edge
acknowledges a version it already runs without re-applying it).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import aiomqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from pydantic import ValidationError

from device_registry.errors import BrokerUnavailable
from device_registry.inventory.provisioning import refused_login
from gridwatch.ground.contract import Command, CommandResult, ConfigAck, ConfigPush, Topics

logger = logging.getLogger(__name__)

CONTROL = "$CONTROL/dynamic-security/v1"
CONTROL_RESPONSE = f"{CONTROL}/response"
_CONTROL_TIMEOUT_S = 5.0
_CONNECT_WAIT_S = 3.0
_SESSION_EXPIRY_S = 7 * 24 * 3600


@dataclass(frozen=True)
class BrokerSettings:
    host: str
    port: int
    prefix: str
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    client_id: str = "gridwatch-registry"
    protocol: Literal["auto", "5", "3.1.1"] = "auto"

    def __repr__(self) -> str:  # the password never reaches a log line or a traceback
        return f"BrokerSettings({self.username}@{self.host}:{self.port}, prefix={self.prefix!r})"


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
        self._version_known = False
        self._client: aiomqtt.Client | None = None
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._v5 = settings.protocol != "3.1.1"

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
            raise BrokerUnavailable(f"not connected to the broker {self._where()}") from None
        client = self._client
        assert client is not None
        try:
            await client.publish(topic, payload, qos=1, retain=retain, timeout=10)
        except aiomqtt.MqttError as exc:
            raise BrokerUnavailable(f"publish to {topic} failed: {exc}") from exc

    # ---- the session -------------------------------------------------------------------------

    async def run(self) -> None:
        delay, failing = 0.2, False
        while True:
            try:
                async with self._connect() as client:
                    await client.subscribe([(self.topics.all_gateways("config/ack"), 1),
                                            (self.topics.all_gateways("cmd/result"), 1),
                                            (CONTROL_RESPONSE, 1)])  # fmt: skip
                    self._client = client
                    self.connected.set()
                    self._version_known = True
                    async with asyncio.TaskGroup() as tg:
                        tg.create_task(self._read(client), name="downlink-read")
                        if self.on_connect is not None:
                            await self.on_connect()
                        self.ready.set()
                        if failing:
                            logger.info("registry downlink: broker %s is back", self._where())
                        failing, delay = False, 0.2
                        self._dirty.update(await self.pending())
                        self._wake.set()
                        tg.create_task(self._push_loop(), name="downlink-push")
            except* (aiomqtt.MqttError, BrokerUnavailable) as group:
                level = logging.DEBUG if failing else logging.ERROR
                logger.log(level, "registry downlink: %s", self._explain(group.exceptions[0]))
                failing = True
                self._maybe_other_protocol(group.exceptions[0])
            finally:
                self.ready.clear()
                self.connected.clear()
                self._client = None
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                # aiomqtt's exit may turn our cancellation into an MqttError (a disconnect
                # during iteration): we were told to stop, not to reconnect
                raise asyncio.CancelledError
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _maybe_other_protocol(self, exc: BaseException) -> None:
        # an MQTT 3.1.1-only broker (the embedded amqtt) does not answer an MQTT 5 CONNECT
        if self.settings.protocol == "auto" and not self._version_known:
            self._v5 = not self._v5
            logger.debug(
                "registry downlink: next try MQTT %s (%s)", "5" if self._v5 else "3.1.1", exc
            )

    def _connect(self) -> aiomqtt.Client:
        s = self.settings
        tls = ssl.create_default_context(cafile=s.ca_file) if s.tls else None
        if self._v5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = _SESSION_EXPIRY_S
            return aiomqtt.Client(
                s.host, s.port, identifier=s.client_id, username=s.username, password=s.password,
                protocol=aiomqtt.ProtocolVersion.V5, clean_start=False, properties=props,
                tls_context=tls, timeout=5,
            )  # fmt: skip
        return aiomqtt.Client(
            s.host, s.port, identifier=s.client_id, username=s.username, password=s.password,
            protocol=aiomqtt.ProtocolVersion.V311, clean_session=False, tls_context=tls, timeout=5,
        )  # fmt: skip

    def _explain(self, exc: BaseException) -> str:
        if isinstance(exc, MqttConnectError) and exc.rc is not None:
            code = exc.rc if isinstance(exc.rc, int) else exc.rc.value
            said = refused_login(self.settings.username, self._where(), code)
            if said is not None:
                return said
        return f"broker {self._where()}: {exc}"

    def _where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    async def _read(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            payload = msg.payload if isinstance(msg.payload, bytes) else str(msg.payload).encode()
            topic = msg.topic.value
            try:
                await self._dispatch(topic, payload)
            except ValidationError as exc:
                logger.warning("registry downlink: unreadable message on %s: %s", topic,
                               exc.errors()[0]["msg"])  # fmt: skip

    async def _dispatch(self, topic: str, payload: bytes) -> None:
        if topic == CONTROL_RESPONSE:
            for r in json.loads(payload).get("responses", []):
                fut = self._waiting.get(r.get("correlationData", ""))
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
                except BrokerUnavailable:
                    self._dirty.add(gateway)  # again after the reconnect
                    raise
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
