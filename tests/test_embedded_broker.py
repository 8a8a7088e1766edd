"""The embedded broker (amqtt) of ``central run`` and the demo, with real MQTT 3.1.1 clients:
retained messages reach only the subscriptions they match, gateways stay in their own tree, and
a gateway's config reaches only that gateway and the centre."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import pytest
from amqtt.contexts import Action

from cloud_bridge.broker import Scope, allowed, embedded_broker
from gridwatch.top.central import Central
from gridwatch.top.cli import build_parser
from tests.services import free_port

CENTRE = "bridge-x"
P = "city"
SCOPE = Scope(P, CENTRE)
PUB, SUB, RECV = Action.PUBLISH, Action.SUBSCRIBE, Action.RECEIVE

ALLOWED: list[tuple[str, str, Action, bool]] = [
    # the centre: everything
    ("bridge-x", "city/gw/+/status", SUB, True),
    ("bridge-x-registry", "city/gw/g1/config", PUB, True),
    ("bridge-x-telemetry", "city/gw/g1/config", RECV, True),
    ("bridge-x-platform", "#", SUB, True),
    ("bridge-xy", "city/gw/g1/config", RECV, False),  # not the centre: only "bridge-x-..."
    # a gateway: its own tree only, filters included
    ("gridwatch-edge-g1", "city/gw/g1/config", SUB, True),
    ("gridwatch-edge-g1", "city/gw/g1/#", SUB, True),
    ("gridwatch-edge-g1", "city/gw/g1/telemetry", PUB, True),
    ("gridwatch-edge-g1", "city/gw/g1/cmd", RECV, True),
    ("gridwatch-edge-g1", "city/gw/g2/config", SUB, False),
    ("gridwatch-edge-g1", "city/gw/+/config", SUB, False),
    ("gridwatch-edge-g1", "city/gw/#", SUB, False),
    ("gridwatch-edge-g1", "#", SUB, False),
    ("gridwatch-edge-g1", "city/gw/g2/status", PUB, False),
    ("gridwatch-edge-g1", "city/gw/g2/config", RECV, False),
    ("gridwatch-edge-g1", "city/platform/alert/a/b/c", RECV, False),
    ("gridwatch-edge-g1", "sensors/smoke/1/up", PUB, False),
    ("gridwatch-edge-g1x", "city/gw/g1/config", RECV, False),  # a prefix is not the id
    ("gridwatch-edge-", "city/gw/g1/config", RECV, False),  # no id at all: another client
    # anyone else: all but gateways' config and cmd
    ("watcher", "city/gw/#", SUB, True),
    ("watcher", "city/gw/g1/status", RECV, True),
    ("watcher", "city/gw/g1/config/ack", RECV, True),
    ("watcher", "city/gw/g1/cmd/result", RECV, True),
    ("watcher", "city/gw/g1/config", RECV, False),
    ("watcher", "city/gw/g1/cmd", RECV, False),
    ("watcher", "other/gw/g1/config", RECV, True),  # another prefix is not ours to guard
    ("watcher", "city/platform/alert/a/b/c", RECV, True),
    ("watcher", "sensors/smoke/1/up", PUB, True),
]


@pytest.mark.parametrize(("client", "topic", "action", "expected"), ALLOWED)
def test_who_may_do_what(client: str, topic: str, action: Action, expected: bool) -> None:
    assert allowed(SCOPE, client, topic, action) is expected


@dataclass(frozen=True)
class Got:
    topic: str
    payload: bytes
    retain: bool


@asynccontextmanager
async def broker() -> AsyncIterator[int]:
    port = free_port()
    async with embedded_broker("127.0.0.1", port, SCOPE):
        yield port


def client(port: int, client_id: str) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier=client_id,
                          protocol=aiomqtt.ProtocolVersion.V311)  # fmt: skip


async def until(c: aiomqtt.Client, marker: str) -> list[Got]:
    """Every message ``c`` receives up to and including one on topic ``marker``: anything a
    broker sends a client arrives in order, so what is not here before the marker never came."""
    got: list[Got] = []
    async with asyncio.timeout(5):
        async for m in c.messages:
            got.append(Got(m.topic.value, bytes(m.payload), bool(m.retain)))
            if m.topic.value == marker:
                return got
    raise AssertionError("the message stream ended")


def codes(granted: object) -> list[int]:
    return [int(getattr(g, "value", g)) for g in granted]


@asynccontextmanager
async def seeded_district(port: int) -> AsyncIterator[aiomqtt.Client]:
    """What ``central run`` holds once gateway g1 is up: the bridge subscribed to every
    gateway's status, g1 to its config and cmd, g1's retained Birth, and a retained config for
    g1 and for g2 (not connected yet). Yields the centre's client, to send markers with."""
    async with AsyncExitStack() as stack:
        bridge = await stack.enter_async_context(client(port, f"{CENTRE}-status"))
        await bridge.subscribe(f"{P}/gw/+/status", qos=1)
        g1 = await stack.enter_async_context(client(port, "gridwatch-edge-g1"))
        await g1.subscribe(f"{P}/gw/g1/config", qos=1)
        await g1.subscribe(f"{P}/gw/g1/cmd", qos=1)
        await g1.publish(f"{P}/gw/g1/status", b"birth g1", qos=1, retain=True)
        assert (await until(bridge, f"{P}/gw/g1/status"))[-1].payload == b"birth g1"
        centre = await stack.enter_async_context(client(port, f"{CENTRE}-registry"))
        await centre.publish(f"{P}/gw/g2/config", b"config g2 v3", qos=1, retain=True)
        await centre.publish(f"{P}/gw/g1/config", b"config g1 v21", qos=1, retain=True)
        assert (await until(g1, f"{P}/gw/g1/config"))[-1].payload == b"config g1 v21"
        yield centre


@pytest.mark.parametrize("topic_filter", ["foo/bar", f"{P}/platform/#"])
async def test_a_new_subscriber_gets_no_retained_message_outside_its_filter(
    topic_filter: str,
) -> None:
    marker = topic_filter.replace("#", "alert/d/c/major")
    async with (
        broker() as port,
        seeded_district(port) as centre,
        client(port, "watcher") as watcher,
    ):
        await watcher.subscribe(topic_filter, qos=1)
        await centre.publish(marker, b"marker", qos=1)
        assert await until(watcher, marker) == [Got(marker, b"marker", False)]


async def test_a_gateway_gets_its_own_retained_config_and_nobody_elses() -> None:
    async with (
        broker() as port,
        seeded_district(port) as centre,
        client(port, "gridwatch-edge-g2") as g2,
    ):
        await g2.subscribe(f"{P}/gw/g2/config", qos=1)
        await g2.subscribe(f"{P}/gw/g2/cmd", qos=1)
        await centre.publish(f"{P}/gw/g2/cmd", b"marker", qos=1)
        assert await until(g2, f"{P}/gw/g2/cmd") == [
            Got(f"{P}/gw/g2/config", b"config g2 v3", True),
            Got(f"{P}/gw/g2/cmd", b"marker", False),
        ]


async def test_a_gateway_cannot_reach_into_another_gateways_tree() -> None:
    async with broker() as port, seeded_district(port) as centre:
        async with client(port, "gridwatch-edge-g2") as g2:
            refused = await g2.subscribe(f"{P}/gw/+/config", qos=1)
            assert codes(refused) == [0x80]
            assert codes(await g2.subscribe(f"{P}/gw/g2/#", qos=1)) == [1]
            async with client(port, "watcher") as watcher:
                await watcher.subscribe(f"{P}/gw/+/status", qos=1)
                assert [g.payload for g in await until(watcher, f"{P}/gw/g1/status")] == [
                    b"birth g1"
                ]
                await g2.publish(f"{P}/gw/g1/status", b"forged birth", qos=1, retain=True)
                await g2.publish(f"{P}/gw/g2/status", b"birth g2", qos=1)
                assert await until(watcher, f"{P}/gw/g2/status") == [
                    Got(f"{P}/gw/g2/status", b"birth g2", False)
                ]
            await centre.publish(f"{P}/gw/g2/cmd", b"marker", qos=1)
            got = await until(g2, f"{P}/gw/g2/cmd")
            assert {g.topic for g in got} == {f"{P}/gw/g2/config", f"{P}/gw/g2/status",
                                              f"{P}/gw/g2/cmd"}  # fmt: skip
        async with client(port, "late") as late:  # g1's retained Birth is still g1's own
            await late.subscribe(f"{P}/gw/g1/status", qos=1)
            assert (await until(late, f"{P}/gw/g1/status"))[0].payload == b"birth g1"


def gateway_with_will(port: int, will: aiomqtt.Will) -> aiomqtt.Client:
    return aiomqtt.Client("127.0.0.1", port, identifier="gridwatch-edge-g2",
                          protocol=aiomqtt.ProtocolVersion.V311, will=will)  # fmt: skip


async def test_a_gateway_whose_will_names_another_gateway_is_refused() -> None:
    forged = aiomqtt.Will(f"{P}/gw/g1/status", b"death g1", qos=1, retain=True)
    async with broker() as port:
        with pytest.raises(aiomqtt.MqttCodeError) as refused:
            async with gateway_with_will(port, forged):
                pass
        # CONNACK 5 under MQTT 3.1.1, which paho reports as reason code 135, "Not authorized"
        assert getattr(refused.value.rc, "value", None) == 135
        own = aiomqtt.Will(f"{P}/gw/g2/status", b"death g2", qos=1, retain=True)
        async with gateway_with_will(port, own) as g2:
            await g2.subscribe(f"{P}/gw/g2/cmd", qos=1)  # connected, and served


async def test_a_watcher_sees_gateways_data_but_not_their_configs_or_commands() -> None:
    async with (
        broker() as port,
        seeded_district(port) as centre,
        client(port, "watcher") as watcher,
    ):
        await watcher.subscribe(f"{P}/gw/#", qos=1)
        await centre.publish(f"{P}/gw/g1/cmd", b"open valve", qos=1)  # live, not retained
        await centre.publish(f"{P}/gw/g1/telemetry", b"marker", qos=1)
        assert await until(watcher, f"{P}/gw/g1/telemetry") == [
            Got(f"{P}/gw/g1/status", b"birth g1", True),
            Got(f"{P}/gw/g1/telemetry", b"marker", False),
        ]


async def test_a_retained_message_still_reaches_a_matching_filter() -> None:
    async with broker() as port, client(port, "sensor") as sensor:
        await sensor.publish("foo/kept", b"last value", qos=1, retain=True)
        await sensor.publish("foo/other", b"marker", qos=1)  # the retained one is stored first
        async with client(port, "watcher") as watcher:
            await watcher.subscribe("foo/#", qos=1)
            await sensor.publish("foo/marker", b"marker", qos=1)
            assert await until(watcher, "foo/marker") == [
                Got("foo/kept", b"last value", True),
                Got("foo/marker", b"marker", False),
            ]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_subscribers_coming_and_going_lose_nobody_a_message(
    seed: int, caplog: pytest.LogCaptureFixture
) -> None:
    """amqtt 0.12 walks its subscription table while it awaits: a SUBSCRIBE meanwhile broke the
    walk, and the message being sent reached nobody after the break (``Subscriptions``)."""
    rng = random.Random(seed)
    async with broker() as port, client(port, "sensor") as sensor, \
            client(port, "steady") as steady:  # fmt: skip
        await steady.subscribe("foo/#", qos=1)

        async def churn() -> None:  # seeded: clients subscribing and leaving at random moments
            for n in range(25):
                async with client(port, f"churn-{n}") as c:
                    for k in range(rng.randint(1, 4)):
                        await c.subscribe(f"foo/{n}/{k}", qos=rng.choice((0, 1)))
                    await asyncio.sleep(rng.random() / 50)

        async def send() -> None:
            for n in range(200):
                await sensor.publish(f"foo/{n % 7}", str(n).encode(), qos=1)
                if rng.random() < 0.3:
                    await asyncio.sleep(0)
            await sensor.publish("foo/end", b"end", qos=1)

        got, *_ = await asyncio.gather(until(steady, "foo/end"), churn(), send())
    assert [g.payload for g in got] == [str(n).encode() for n in range(200)] + [b"end"]
    assert not [r for r in caplog.records if r.exc_info], "a broadcast failed"


async def test_start_up_says_what_it_does_not_enforce(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="cloud_bridge.broker")
    async with broker() as port:
        pass
    [warning] = [r.getMessage() for r in caplog.records if r.name == "cloud_bridge.broker"]
    assert f"127.0.0.1:{port}" in warning
    for fact in ("does NOT authenticate", "any client id", "does NOT encrypt (no TLS)",
                 "its last will too",
                 "does NOT persist", f"only under {P}/gw/<id>/#", f"{CENTRE}-*",
                 "only to subscriptions it matches", "mosquitto"):  # fmt: skip
        assert fact in warning, fact


async def test_central_run_scopes_its_broker_to_its_prefix_and_bridge_id(
    tmp_path: Path, prefix: str
) -> None:
    """The default ``central run``: no --mqtt-host, so the embedded broker, scoped with the
    run's --prefix and with --bridge-id's clients as the centre."""
    port = free_port()
    args = build_parser().parse_args(["central", "run", "--http-port", "0", "--data-dir",
                                      str(tmp_path), "--prefix", prefix, "--mqtt-port",
                                      str(port), "--bridge-id", "hq"])  # fmt: skip
    central = Central(args)
    stop = asyncio.Event()
    task = asyncio.create_task(central.run(stop), name="central")
    try:
        async with asyncio.timeout(20):
            await central.ready.wait()
        async with (
            client(port, "hq-registry") as centre,
            client(port, "gridwatch-edge-g2") as g2,
            client(port, "watcher") as watcher,
        ):
            assert codes(await g2.subscribe(f"{prefix}/gw/+/config", qos=1)) == [0x80]
            await centre.publish(f"{prefix}/gw/g1/config", b"config g1", qos=1, retain=True)
            await watcher.subscribe(f"{prefix}/gw/#", qos=1)
            await watcher.subscribe("marker", qos=1)
            await centre.publish("marker", b"marker", qos=1)
            assert await until(watcher, "marker") == [Got("marker", b"marker", False)]
            async with client(port, "hq-console") as console:  # another of the centre's
                await console.subscribe(f"{prefix}/gw/+/config", qos=1)
                got = await until(console, f"{prefix}/gw/g1/config")
                assert got == [Got(f"{prefix}/gw/g1/config", b"config g1", True)]
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task
