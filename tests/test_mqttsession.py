"""The one MQTT session: the MQTT 5 -> 3.1.1 decision as a table, then the session against a real mosquitto (killed and started again, down for a while,
a list of endpoints of which the first is dead) and the embedded amqtt broker (MQTT 3.1.1 only)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from cloud_bridge.broker import Scope, embedded_broker
from gridwatch.ground.mqttsession import (
    Endpoint,
    MqttSession,
    SessionSettings,
    connack_code,
    fall_back,
    read_note,
    refused_filters,
    stale_filters,
    subscriptions_note,
    write_note,
)
from tests.services import Mosquitto, free_port

# ---- falling back from MQTT 5 to 3.1.1 -----------------------------------------------------------

# (CONNACK code or None for no CONNACK, TCP connection made, fall back to the other version?)
FALLBACK: list[tuple[int | None, bool, bool]] = [
    (132, True, True),  # MQTT 5: Unsupported Protocol Version
    (1, True, True),  # MQTT 3.1.1: unacceptable protocol version
    (135, True, False),  # not authorised: the other version will not help
    (134, True, False),  # bad user name or password
    (5, True, False),  # 3.1.1: not authorised
    (128, True, False),  # unspecified error
    (136, True, False),  # server unavailable
    (None, True, True),  # connected, and the CONNECT got no answer: a 3.1.1-only broker (amqtt)
    (None, False, False),  # nothing listens there: no version will help
]


@pytest.mark.parametrize(("code", "reached", "other"), FALLBACK)
def test_fall_back_decision(code: int | None, reached: bool, other: bool) -> None:
    assert fall_back(code, reached) is other


def test_connack_code_from_aiomqtt_errors() -> None:
    refused_v5 = MqttConnectError(ReasonCode(PacketTypes.CONNACK, identifier=132))
    assert connack_code(refused_v5) == 132
    assert connack_code(MqttConnectError(1)) == 1
    assert connack_code(aiomqtt.MqttError("Operation timed out")) is None
    assert connack_code(OSError("refused")) is None


# ---- the session on real brokers ---------------------------------------------------------------


def settings(*endpoints: Endpoint, **kw: object) -> SessionSettings:
    return SessionSettings(endpoints=endpoints, client_id=f"test-{free_port()}", **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def running(
    session: MqttSession, serve: Callable[[aiomqtt.Client], Awaitable[None]]
) -> AsyncIterator[MqttSession]:
    task = asyncio.create_task(session.run(serve))
    try:
        yield session
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()  # only cancellation ends it


async def forever(_client: aiomqtt.Client) -> None:
    await asyncio.Event().wait()


async def test_session_comes_back_after_a_kill_and_an_outage_and_subscribes_again(
    tmp_path: Path, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gridwatch.ground.mqttsession")
    broker = Mosquitto(tmp_path / "mq").start()
    heard: asyncio.Queue[bytes] = asyncio.Queue()

    async def listen(client: aiomqtt.Client) -> None:
        async for m in client.messages:
            assert isinstance(m.payload, bytes)
            await heard.put(m.payload)

    s = MqttSession(
        settings(Endpoint(broker.host, broker.port), subscriptions=((f"{prefix}/x", 1),)), "t"
    )

    async def say(word: bytes) -> None:
        async with aiomqtt.Client(broker.host, broker.port) as pub:
            await pub.publish(f"{prefix}/x", word, qos=1)
        async with asyncio.timeout(5):
            assert await heard.get() == word

    try:
        async with running(s, listen):
            await s.watch.until(lambda: s.state.connected, 10)
            await say(b"before")
            broker.restart(signal.SIGKILL)  # a crash: the broker forgets the subscription
            await s.watch.until(lambda: s.state.outages == 1 and s.state.connected, 10)
            await say(b"after the kill")
            broker.stop()
            await s.watch.until(lambda: not s.state.connected, 10)
            down_since = s.state.since
            await asyncio.sleep(1.5)  # the outage itself: the session retries meanwhile
            broker.start()
            await s.watch.until(lambda: s.state.connected, 5)
            await say(b"after the outage")
            assert s.state.outages == 2 and down_since is not None
            assert s.state.since is not None and s.state.since > down_since
    finally:
        broker.stop()
    records = [r for r in caplog.records if r.name == "gridwatch.ground.mqttsession"]
    errors = [r for r in records if r.levelno == logging.ERROR]
    assert len(errors) == 2, [r.getMessage() for r in errors]  # one per outage, not one per try
    assert sum("still down" in r.getMessage() for r in records if r.levelno == logging.DEBUG) >= 2
    assert sum("is back" in r.getMessage() for r in records if r.levelno == logging.INFO) == 2


async def test_session_moves_on_to_the_next_endpoint(mosquitto: Mosquitto) -> None:
    dead = Endpoint("127.0.0.1", free_port())  # nothing listens there
    s = MqttSession(settings(dead, Endpoint(mosquitto.host, mosquitto.port)), "t")
    async with running(s, forever):
        await s.watch.until(lambda: s.state.connected, 10)
    assert s.state.endpoint == f"{mosquitto.host}:{mosquitto.port}"
    assert s.state.last_error is not None and str(dead) in s.state.last_error


async def test_a_bug_in_serve_does_not_end_the_session(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    calls, again = 0, asyncio.Event()

    async def buggy(_client: aiomqtt.Client) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("a bug")
        again.set()
        await asyncio.Event().wait()

    s = MqttSession(settings(Endpoint(mosquitto.host, mosquitto.port)), "t")
    async with running(s, buggy):
        async with asyncio.timeout(10):
            await again.wait()
        assert s.state.connected and s.state.outages == 1
    assert "KeyError: 'a bug'" in caplog.text  # logged with its traceback


# (asked for, what the broker speaks, version connected with)
VERSIONS: list[tuple[str, str, str]] = [
    ("auto", "mosquitto", "5"),
    ("3.1.1", "mosquitto", "3.1.1"),
    ("auto", "amqtt", "3.1.1"),  # amqtt ignores an MQTT 5 CONNECT: no CONNACK, then 3.1.1
]


@pytest.mark.parametrize(("asked", "broker", "version"), VERSIONS)
async def test_session_connects_with_the_version_the_broker_speaks(
    mosquitto: Mosquitto, asked: str, broker: str, version: str
) -> None:
    if broker == "amqtt":
        port = free_port()
        async with embedded_broker("127.0.0.1", port):
            s = MqttSession(
                settings(Endpoint("127.0.0.1", port), protocol=asked, timeout_s=1.0), "t"
            )
            async with running(s, forever):
                await s.watch.until(lambda: s.state.connected, 10)
    else:
        s = MqttSession(settings(Endpoint(mosquitto.host, mosquitto.port), protocol=asked), "t")
        async with running(s, forever):
            await s.watch.until(lambda: s.state.connected, 10)
    assert s.state.version == version


async def test_an_idle_session_notices_the_loss_at_once(tmp_path: Path) -> None:
    """``serve`` need not touch the client for the loss to show in the state (health reports)."""
    broker = Mosquitto(tmp_path / "mq").start()
    s = MqttSession(settings(Endpoint(broker.host, broker.port)), "idle")
    try:
        async with running(s, forever):
            await s.watch.until(lambda: s.state.connected, 10)
            broker.restart(signal.SIGKILL)
            await s.watch.until(lambda: s.state.outages == 1, 5)
            await s.watch.until(lambda: s.state.connected, 10)
    finally:
        broker.stop()


# ---- a fallback that works is no outage ---------------------------------------------------------


def _ours(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == level and r.name.startswith(("gridwatch", "edge"))
    ]


async def test_a_fallback_to_mqtt_3_1_1_that_works_logs_no_error(
    caplog: pytest.LogCaptureFixture, tmp_path: Path, prefix: str
) -> None:
    """Issue 12 #9: the edge logged an ERROR for its MQTT 5 try although 3.1.1 worked at once."""
    from edge.outbox import Outbox
    from edge.pipeline import Pipeline
    from edge.uplink import Uplink
    from gridwatch.ground.contract import Topics
    from gridwatch.ground.gatewayconf import MqttUplink
    from tests.fieldkit import gateway_config

    caplog.set_level(logging.DEBUG)
    port = free_port()
    cfg, devices, _ = gateway_config(tmp_path, port, prefix)
    box = Outbox(tmp_path / "outbox.db", 10**7)
    topics = Topics(prefix)
    pipe = Pipeline(cfg.gateway.id, devices, box, topics, time.time)
    uplink = Uplink(MqttUplink(port=port, prefix=prefix, protocol="auto"), cfg.gateway.id, box,
                    pipe, topics, 1, time.time)  # fmt: skip
    try:
        # amqtt: MQTT 3.1.1 only; scoped to this test's prefix, as central run scopes it to its own
        async with embedded_broker("127.0.0.1", port, Scope(prefix)):
            task = asyncio.create_task(uplink.run())
            try:
                await uplink.wait_until(lambda u: u.connected, within_s=20)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
    finally:
        box.close()
    assert uplink.mqtt.state.version == "3.1.1" and uplink.reconnects == 0
    assert _ours(caplog, logging.ERROR) == []
    assert f"mqtt uplink: 127.0.0.1:{port} speaks MQTT 3.1.1 only; using it" in _ours(
        caplog, logging.INFO
    )


async def test_a_fallback_that_fails_too_is_the_outage_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Something that takes the TCP connection and answers no CONNECT, of either version."""
    caplog.set_level(logging.DEBUG, logger="gridwatch.ground.mqttsession")
    tried = 0

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal tried
        tried += 1
        await reader.read()  # until the client gives up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    s = MqttSession(settings(Endpoint("127.0.0.1", port), timeout_s=0.3), "mute")
    async with server, running(s, forever):
        await s.watch.until(lambda: tried >= 4, 10)  # two attempts, each 5 then 3.1.1
    errors = _ours(caplog, logging.ERROR)
    assert errors == [f"mqtt mute: 127.0.0.1:{port} cannot connect: Operation timed out"]
    assert s.state.outages == 1 and not s.state.connected


async def test_the_fallback_to_the_embedded_broker_costs_the_probe_not_the_timeout(
    mosquitto: Mosquitto,
) -> None:
    """amqtt never answers an MQTT 5 CONNECT: with the default 5 s timeout, the edge used to wait
    all of it before its 3.1.1 CONNECT. Now the first CONNECT waits ``probe_s`` (2 s); the
    connected client, on amqtt or on mosquitto (MQTT 5), gets the full timeout for its calls."""
    timeouts: list[float] = []
    served = asyncio.Event()

    async def note(client: aiomqtt.Client) -> None:
        timeouts.append(client.timeout)
        served.set()
        await forever(client)

    port = free_port()
    async with embedded_broker("127.0.0.1", port):
        s = MqttSession(settings(Endpoint("127.0.0.1", port)), "t")
        started = time.monotonic()
        async with running(s, note):
            await s.watch.until(lambda: s.state.connected, 10)
            took = time.monotonic() - started
            await asyncio.wait_for(served.wait(), 10)
    assert s.settings.timeout_s == 5.0 and took < 3.5, took  # 5 s and more before
    five = MqttSession(settings(Endpoint(mosquitto.host, mosquitto.port)), "t")
    served.clear()
    async with running(five, note):
        await asyncio.wait_for(served.wait(), 10)
    assert timeouts == [5.0, 5.0]


# (the filters asked, what the SUBACK granted, the refusals named): 3.1.1 grants QoS or 0x80,
# MQTT 5 answers reason codes (0x87 "not authorized" from an ACL)
REFUSALS = [
    ([("a/#", 1), ("b/#", 1)], [1, 0], []),
    ([("a/#", 1), ("$share/g/b/#", 1)], [1, 0x80], ["$share/g/b/#"]),
    ([("a/#", 1)], [ReasonCode(PacketTypes.SUBACK, identifier=0x87)], ["a/#"]),
    ([("a/#", 1)], [ReasonCode(PacketTypes.SUBACK, identifier=1)], []),
]


@pytest.mark.parametrize(("subs", "granted", "names"), REFUSALS)
def test_a_refused_subscription_is_named(
    subs: list[tuple[str, int]], granted: list[object], names: list[str]
) -> None:
    assert [r.split(" (")[0] for r in refused_filters(subs, granted)] == names


# ---- a session owns its subscriptions --------------------------------------------------------

# (wanted now, noted by an earlier run, may hold from an earlier configuration, unsubscribed)
STALE: list[tuple[list[str], list[str], list[str], list[str]]] = [
    (["$share/g/a"], ["a"], ["a"], ["a"]),  # plain, then in a group
    (["$share/g/a"], [], ["a"], ["a"]),  # ... with the note lost: the plain form is a guess
    (["$share/g2/a"], ["$share/g1/a"], ["a", "$share/g2/a"], ["$share/g1/a", "a"]),  # new group
    (["a"], ["$share/g/a"], [], ["$share/g/a"]),  # out of the group
    (["a"], [], [], []),  # out of a group, note lost: its name is unknowable
    (["a", "b"], ["a", "b"], [], []),  # the same again: nothing to drop
    (["a"], ["a", "b"], ["b"], ["b"]),  # a filter no longer wanted, in both lists: once
    ([], ["a"], [], ["a"]),  # wants nothing now
]


@pytest.mark.parametrize(("wanted", "noted", "may_hold", "dropped"), STALE)
def test_stale_filters(
    wanted: list[str], noted: list[str], may_hold: list[str], dropped: list[str]
) -> None:
    assert stale_filters(wanted, noted, may_hold) == sorted(dropped)


def test_the_note_is_one_file_per_client_id_whatever_its_characters(tmp_path: Path) -> None:
    ids = ["bridge-events", "a/b", "../x", "a%2Fb", "é"]
    paths = [subscriptions_note(tmp_path, i) for i in ids]
    assert len(set(paths)) == len(ids)
    assert all(p.parent == tmp_path / "mqtt-subscriptions" for p in paths)
    for i, p in zip(ids, paths, strict=True):
        write_note(p, [f"{i}/#"])
        assert read_note(p) == {f"{i}/#"}


@pytest.mark.parametrize(
    "content", [b"", b"{not json", b"[]", b'{"filters": "a/#"}', b'{"filters": [1]}', b"\xff"]
)
def test_a_damaged_note_is_said_and_taken_as_none(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    path = subscriptions_note(tmp_path, "c")
    path.parent.mkdir(parents=True)
    path.write_bytes(content)
    assert read_note(path) == set()
    assert str(path) in caplog.text
    assert read_note(tmp_path / "none.json") == set()  # no note: a first start, said nothing


async def test_a_resumed_session_drops_what_it_no_longer_wants(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A persistent session subscribed to ``old``; the next run of the same client id wants
    ``new`` only. The broker resumes the session with ``old`` in it: the session drops it."""
    caplog.set_level(logging.INFO, logger="gridwatch.ground.mqttsession")
    old, new = f"{prefix}/old/#", f"{prefix}/new/#"
    client_id = f"{prefix}-owner"
    note = subscriptions_note(tmp_path, client_id)
    heard: asyncio.Queue[str] = asyncio.Queue()

    async def listen(client: aiomqtt.Client) -> None:
        async for m in client.messages:
            await heard.put(str(m.topic))

    def session(filters: str) -> MqttSession:
        return MqttSession(SessionSettings(
            endpoints=(Endpoint(mosquitto.host, mosquitto.port),), client_id=client_id,
            protocol="5", subscriptions=((filters, 1),), note_file=note), "t")  # fmt: skip

    first = session(old)
    async with running(first, listen):
        await first.watch.until(lambda: first.state.connected, 10)
    assert read_note(note) == {old}
    second = session(new)
    async with running(second, listen), publisher(mosquitto) as pub:
        await second.watch.until(lambda: second.state.connected, 10)
        await pub.publish(f"{prefix}/old/x", b"1", qos=1)
        await pub.publish(f"{prefix}/new/x", b"2", qos=1)
        async with asyncio.timeout(5):
            assert await heard.get() == f"{prefix}/new/x"  # in order: the old one never came
        assert heard.empty()
    assert read_note(note) == {new}
    assert f"unsubscribed ['{old}']" in caplog.text


@asynccontextmanager
async def publisher(broker: Mosquitto) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        yield client
