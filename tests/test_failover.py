"""Broker failover: a list of brokers written on the command line and in the gateway config (tables),
the order the session tries them in (a table on real sockets), and two real mosquitto processes,
A and B, one of them SIGKILLed at a time: the session moves to the other and serves there,
subscribed again (an MQTT 5 shared subscription on a persistent session, as the bridge's lanes)."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from cloud_bridge import SqliteSink
from device_registry import RegistryStore
from device_registry.inventory.configgen import Uplink as ConfigUplink
from device_registry.inventory.downlink import BrokerSettings, Downlink
from edge.outbox import PRIO_TELEMETRY, Outbox
from edge.pipeline import Pipeline
from edge.uplink import Uplink
from gridwatch.ground.contract import Birth, Topics
from gridwatch.ground.endpoints import Endpoint, parse_endpoints
from gridwatch.ground.gatewayconf import GatewayConfig, MqttUplink
from gridwatch.ground.mqttsession import MqttSession, SessionSettings
from gridwatch.ground.yamlconf import ConfigError, line_map, validate
from tests._central_helpers import (
    birth,
    bridge_config,
    bridge_on,
    publisher,
    until,
)
from tests.fieldkit import gateway_config, listen
from tests.services import Mosquitto, free_port
from tests.test_mqttsession import forever, running

# ---- a list of brokers on the command line ------------------------------------------------------

# (text, default port, the endpoints)
PARSED: list[tuple[str, int, list[tuple[str, int]]]] = [
    ("broker.city", 1883, [("broker.city", 1883)]),
    ("broker.city:8883", 1883, [("broker.city", 8883)]),
    ("a:1883,b:1884", 1883, [("a", 1883), ("b", 1884)]),
    ("a, b ,c:2", 7, [("a", 7), ("b", 7), ("c", 2)]),  # spaces around items are fine
    ("[::1]", 1883, [("::1", 1883)]),
    ("[fd00::2]:8883,10.0.0.3", 1883, [("fd00::2", 8883), ("10.0.0.3", 1883)]),
]


@pytest.mark.parametrize(("text", "port", "expected"), PARSED)
def test_a_list_of_brokers_is_read(text: str, port: int, expected: list[tuple[str, int]]) -> None:
    assert [(e.host, e.port) for e in parse_endpoints(text, port)] == expected


# (text, what the error says)
REFUSED: list[tuple[str, str]] = [
    ("", "an empty broker in the list"),
    ("a,,b", "an empty broker in the list"),
    ("a,", "an empty broker in the list"),
    (":1883", "the host is missing"),
    ("a:0", "the port must be a number from 1 to 65535"),
    ("a:65536", "the port must be a number from 1 to 65535"),
    ("a:http", "the port must be a number from 1 to 65535"),
    ("a:", "the port must be a number from 1 to 65535"),
    ("::1", "write an IPv6 address in brackets, e.g. [::1]:1883"),
    ("[::1", "write an IPv6 address as [address] or [address]:port"),
    ("[::1]x", "write an IPv6 address as [address] or [address]:port"),
    ("a:1883,a", "broker a:1883 is listed twice"),
]


@pytest.mark.parametrize(("text", "says"), REFUSED)
def test_a_bad_list_of_brokers_says_which_item_and_how(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        parse_endpoints(text, 1883)


def test_an_ipv6_endpoint_is_written_back_in_brackets() -> None:
    assert [str(e) for e in parse_endpoints("[::1]:1,h", 2)] == ["[::1]:1", "h:2"]


def test_the_cli_refuses_a_bad_list_before_anything_starts(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gridwatch.top.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["bridge", "run", "--mqtt-host", "a:1883,:1884"])
    assert "broker ':1884': the host is missing" in capsys.readouterr().err
    args = build_parser().parse_args(["bridge", "run", "--mqtt-host", "a:1,b", "--mqtt-port", "2"])
    from cloud_bridge.config import BridgeConfig

    assert BridgeConfig.from_args(args).brokers == (Endpoint("a", 1), Endpoint("b", 2))


# ---- a list of brokers in the gateway config ---------------------------------------------------

GATEWAY = "gateway: {id: g1}\nbuses: []\ndevices: []\nmqtt:\n"

# (the mqtt block, the brokers as (host, port, tls))
CONFIGS: list[tuple[str, list[tuple[str, int, bool]]]] = [
    ("  prefix: p\n", [("127.0.0.1", 1883, False)]),  # the default broker
    ("  host: b.city\n", [("b.city", 1883, False)]),
    ("  host: b.city\n  port: 8883\n  tls: true\n", [("b.city", 8883, True)]),
    (
        "  endpoints:\n    - {host: a.city, port: 8883}\n    - {host: b.city, tls: false}\n"
        "  tls: true\n",
        [("a.city", 8883, True), ("b.city", 1883, False)],  # each may say tls; else mqtt.tls
    ),
]


@pytest.mark.parametrize(("block", "brokers"), CONFIGS)
def test_gateway_config_names_one_broker_or_several(
    block: str, brokers: list[tuple[str, int, bool]]
) -> None:
    cfg = GatewayConfig.model_validate(_yaml(GATEWAY + block))
    assert [(b.host, b.port, b.tls) for b in cfg.mqtt.brokers()] == brokers


def test_naming_the_default_broker_is_the_same_config_as_leaving_it_out() -> None:
    # the edge refuses a pushed config whose uplink differs from the running one
    named = GatewayConfig.model_validate(_yaml(GATEWAY + "  host: 127.0.0.1\n  port: 1883\n"))
    left_out = GatewayConfig.model_validate(_yaml(GATEWAY + "  prefix: gridwatch\n"))
    assert named.mqtt == left_out.mqtt


# (the mqtt block, the problem as the installer reads it)
BAD_CONFIGS: list[tuple[str, str]] = [
    (
        "  host: a.city\n  endpoints:\n    - {host: b.city}\n",
        "g.yaml:6: mqtt -> endpoints: Value error, give the broker either as host/port (one "
        "broker) or as endpoints (several), not both: move host into the endpoints list",
    ),
    (
        "  port: 8883\n  endpoints:\n    - {host: b.city}\n",
        "g.yaml:6: mqtt -> endpoints: Value error, give the broker either as host/port (one "
        "broker) or as endpoints (several), not both: move port into the endpoints list",
    ),
    (
        "  endpoints: []\n",
        "g.yaml:5: mqtt -> endpoints: List should have at least 1 item after validation, not 0",
    ),
    (
        "  endpoints:\n    - {host: a}\n    - {host: a, port: 1883}\n",
        "g.yaml:5: mqtt -> endpoints: Value error, each broker once: a:1883 is listed twice",
    ),
    (
        "  endpoints:\n" + "    - {host: h, port: %d}\n" * 17 % tuple(range(1, 18)),
        "g.yaml:5: mqtt -> endpoints: List should have at most 16 items after validation, not 17",
    ),
    ("  endpoints:\n    - {port: 1}\n", "g.yaml:6: mqtt -> endpoints -> 0 -> host: Field required"),
    (
        "  endpoints:\n    - {host: a, prot: 1}\n",
        "g.yaml:6: mqtt -> endpoints -> 0 -> prot: Extra inputs are not permitted (got 1)",
    ),
]


@pytest.mark.parametrize(("block", "problem"), BAD_CONFIGS)
def test_a_bad_broker_list_is_reported_at_its_line(block: str, problem: str) -> None:
    text = GATEWAY + block
    with pytest.raises(ConfigError) as err:
        validate(GatewayConfig, _yaml(text), "g.yaml", line_map(text))
    assert [str(p) for p in err.value.problems] == [problem]


def _yaml(text: str) -> object:
    import yaml

    return yaml.safe_load(text)


# ---- the order the session tries brokers in ---------------------------------------------------

# (brokers, each up or down; the brokers tried, by position, until connected; connected to)
ROTATION: list[tuple[list[str], list[int], int | None]] = [
    (["up"], [1], 1),
    (["down", "up"], [1, 2], 2),
    (["down", "down", "up"], [1, 2, 3], 3),
    (["down", "down"], [1, 2, 1, 2, 1, 2], None),  # round robin while all are down
]


@pytest.mark.parametrize(("layout", "tried", "on"), ROTATION)
async def test_the_session_tries_the_brokers_in_turn(
    mosquitto: Mosquitto,
    caplog: pytest.LogCaptureFixture,
    layout: list[str],
    tried: list[int],
    on: int | None,
) -> None:
    caplog.set_level(logging.DEBUG, logger="gridwatch.ground.mqttsession")
    endpoints = tuple(
        Endpoint(mosquitto.host, mosquitto.port)
        if x == "up"
        else Endpoint("127.0.0.1", free_port())
        for x in layout
    )
    s = MqttSession(SessionSettings(endpoints, f"rot-{free_port()}", protocol="5"), "rot")
    failures = len(tried) - (1 if on else 0)
    async with running(s, forever):
        await s.watch.until(lambda: s.state.connected if on else _tries(caplog) >= failures, 10)
        assert s.state.report()["broker"] == on and s.state.report()["brokers"] == len(layout)
    attempts = [endpoints.index(_endpoint(m)) + 1 for m in _failures(caplog)][:failures]
    assert attempts + ([on] if on else []) == tried


def _failures(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "gridwatch.ground.mqttsession"
        and re.search(r"cannot connect|still down", r.getMessage())
    ]


def _tries(caplog: pytest.LogCaptureFixture) -> int:
    return len(_failures(caplog))


def _endpoint(message: str) -> Endpoint:
    host, port = re.findall(r"mqtt rot: ([\d.]+):(\d+) ", message)[0]
    return Endpoint(host, int(port))


# ---- two real brokers, one killed at a time ------------------------------------------------------


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[tuple[Mosquitto, Mosquitto]]:
    a = Mosquitto(tmp_path / "a").start()
    b = Mosquitto(tmp_path / "b").start()
    try:
        yield a, b
    finally:
        a.stop()
        b.stop()


def kill(broker: Mosquitto) -> None:
    """A crash of one node: SIGKILL, the port closed, nothing saved."""
    assert broker.proc is not None
    broker.proc.kill()
    broker.proc.wait(5)
    broker.proc = None


async def test_a_shared_persistent_session_moves_to_the_other_broker_and_back(
    brokers: tuple[Mosquitto, Mosquitto], prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, b = brokers
    caplog.set_level(logging.INFO, logger="gridwatch.ground.mqttsession")
    heard: asyncio.Queue[bytes] = asyncio.Queue()

    async def listen(client: aiomqtt.Client) -> None:
        async for m in client.messages:
            assert isinstance(m.payload, bytes)
            await heard.put(m.payload)

    # as a bridge lane: MQTT 5, a persistent session, a shared subscription
    settings = SessionSettings(
        (Endpoint(a.host, a.port), Endpoint(b.host, b.port)), f"lane-{prefix}", protocol="5",
        subscriptions=((f"$share/g-{prefix}/{prefix}/x", 1),),
    )  # fmt: skip
    s = MqttSession(settings, "lane")

    async def say(via: Mosquitto, word: bytes) -> None:
        async with aiomqtt.Client(via.host, via.port) as pub:
            await pub.publish(f"{prefix}/x", word, qos=1)
        async with asyncio.timeout(5):
            assert await heard.get() == word

    async def on(broker: int, within_s: float) -> float:
        began = time.monotonic()
        await s.watch.until(lambda: s.state.connected and s.state.broker == broker, within_s)
        return time.monotonic() - began

    async with running(s, listen):
        await on(1, 10)
        await say(a, b"on A")
        kill(a)
        moved_s = await on(2, 5)
        await say(b, b"on B, subscribed again")
        a.start()
        kill(b)
        back_s = await on(1, 5)
        await say(a, b"back on A")
        assert s.state.outages == 2
        assert s.state.report() == {
            "connected": True, "since": s.state.since, "outages": 2, "broker": 1, "brokers": 2,
        }  # fmt: skip
    assert moved_s < 3 and back_s < 3, (moved_s, back_s)
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(f"moved to {b.host}:{b.port} (broker 2 of 2, MQTT 5)" in m for m in said), said
    assert any(f"moved to {a.host}:{a.port} (broker 1 of 2, MQTT 5)" in m for m in said), said


async def test_the_edge_uplink_moves_to_the_other_broker_and_keeps_sending(
    brokers: tuple[Mosquitto, Mosquitto], prefix: str, tmp_path: Path
) -> None:
    a, b = brokers
    cfg, devices, _ = gateway_config(tmp_path, a.port, prefix)
    box = Outbox(tmp_path / "outbox.db", 10**7)
    topics = Topics(prefix)
    pipe = Pipeline(cfg.gateway.id, devices, box, topics, time.time)
    mqtt = MqttUplink.model_validate({"prefix": prefix, "endpoints": [
        {"host": a.host, "port": a.port}, {"host": b.host, "port": b.port}]})  # fmt: skip
    uplink = Uplink(mqtt, cfg.gateway.id, box, pipe, topics, 1, time.time)
    box.notify = uplink.notify
    task = asyncio.create_task(uplink.run())
    try:
        await uplink.wait_until(lambda u: u.connected and u.mqtt.state.broker == 1, within_s=10)
        first = pipe.session
        kill(a)
        began = time.monotonic()
        await uplink.wait_until(lambda u: u.connected and u.mqtt.state.broker == 2, within_s=5)
        moved_s = time.monotonic() - began
        assert pipe.session == first + 1
        async with listen(b.port, f"{prefix}/#") as seen:
            await seen.wait_for(lambda s: len(s.on("status")) == 1)
            assert Birth.model_validate(seen.on("status")[0]).session == first + 1
            box.enqueue(PRIO_TELEMETRY, "health", topics.health(cfg.gateway.id), lambda _: b"{}")
            await seen.wait_for(lambda s: len(s.on("health")) == 1)  # sent on B
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        box.close()
    assert moved_s < 3, moved_s


async def test_the_bridge_moves_its_lanes_to_the_other_broker(
    brokers: tuple[Mosquitto, Mosquitto], prefix: str, tmp_path: Path
) -> None:
    a, b = brokers
    store = await RegistryStore.open(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    sink = await SqliteSink.open(tmp_path / "history.db")
    cfg = bridge_config(f"{a.host}:{a.port},{b.host}:{b.port}", 1883, prefix, tmp_path / "c")
    try:
        async with bridge_on(cfg, store, sink) as bridge:
            async with publisher(a.host, a.port) as pub:
                await pub.publish(Topics(prefix).status("gw-1"), _birth(1), qos=1)
            await until(bridge, lambda s: s.ingested["birth"] == 1)
            kill(a)
            for lane in bridge.sessions.values():  # both lanes, each subscribed again on B
                await lane.watch.until(lambda s=lane: s.state.connected and s.state.broker == 2, 5)
            async with publisher(b.host, b.port) as pub:
                await pub.publish(Topics(prefix).status("gw-1"), _birth(2), qos=1)
            await until(bridge, lambda s: s.ingested["birth"] == 2)
    finally:
        await sink.close()
        await store.close()
    assert [g.session for g in await _gateways(tmp_path)] == [2]


def _birth(session: int) -> bytes:
    return birth("gw-1", session, ["d1"]).model_dump_json().encode()


async def _gateways(tmp_path: Path) -> list[Any]:
    store = await RegistryStore.open(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    try:
        return list(await store.gateways())
    finally:
        await store.close()


async def test_the_registry_downlink_moves_and_pushes_configs_on_the_other_broker(
    brokers: tuple[Mosquitto, Mosquitto], prefix: str
) -> None:
    a, b = brokers
    versions = {"gw-1": 1}

    async def config_of(gateway: str) -> tuple[int, dict[str, Any] | None]:
        return versions[gateway], {"gateway": {"id": gateway}, "buses": [], "devices": []}

    async def nothing_pending() -> list[str]:
        return []

    async def ignore(_: object) -> None:
        return None

    settings = BrokerSettings(f"{a.host}:{a.port},{b.host}:{b.port}", 1883, prefix,
                              client_id=f"reg-{prefix}")  # fmt: skip
    downlink = Downlink(settings, config_of, nothing_pending, ignore, ignore, lambda: 1)
    task = asyncio.create_task(downlink.run())
    try:
        async with asyncio.timeout(10):
            await downlink.ready.wait()
        assert downlink.session.state.broker == 1
        kill(a)
        await downlink.session.watch.until(lambda: downlink.session.state.broker == 2, 5)
        async with listen(b.port, Topics(prefix).config("gw-1")) as seen:
            versions["gw-1"] = 2
            downlink.push("gw-1")
            await seen.wait_for(lambda s: len(s.messages) == 1)
        assert seen.messages[0][1]["version"] == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


# ---- generated gateway configs -------------------------------------------------------------------

# (what --gateway-mqtt-host says, the broker part of the generated mqtt block)
GENERATED: list[tuple[str, dict[str, Any]]] = [
    ("mq.city", {"host": "mq.city", "port": 8883}),
    (
        "mq-a:1883,mq-b",
        {"endpoints": [{"host": "mq-a", "port": 1883}, {"host": "mq-b", "port": 8883}]},
    ),
]


@pytest.mark.parametrize(("given", "block"), GENERATED)
def test_generated_configs_list_several_brokers_as_endpoints(
    given: str, block: dict[str, Any]
) -> None:
    mqtt = ConfigUplink(host=given, port=8883, prefix="city").mqtt_block("gw-x")
    assert {k: v for k, v in mqtt.items() if k in ("host", "port", "endpoints")} == block
    MqttUplink.model_validate(mqtt)  # what the edge will accept


def _sessions(health: dict[str, Any]) -> dict[str, int | None]:
    """Every MQTT session in a /health answer: where it is -> which broker it is on."""
    out: dict[str, int | None] = {}

    def walk(node: object, at: str) -> None:
        if isinstance(node, dict):
            if "brokers" in node:
                out[at] = node["broker"]
            for k, v in node.items():
                walk(v, f"{at}/{k}")

    walk(health["parts"], "")
    return out


def _health(port: int) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
            body: dict[str, Any] = json.load(r)
    except urllib.error.HTTPError as err:  # 503 while a part is down: the same body
        body = json.load(err)
    return body


def _wait_health(port: int, broker: int, within_s: float = 10) -> dict[str, int | None]:
    """Poll another process's /health until every MQTT session is on ``broker``."""
    deadline = time.monotonic() + within_s
    while set((on := _sessions(_health(port))).values()) != {broker}:
        assert time.monotonic() < deadline, on
        time.sleep(0.1)
    return on


def test_central_run_with_two_brokers_moves_every_session_and_says_so_on_health(
    brokers: tuple[Mosquitto, Mosquitto], prefix: str, tmp_path: Path
) -> None:
    a, b = brokers
    port, log = free_port(), tmp_path / "central.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridwatch.top.cli", "central", "run",
             "--data-dir", str(tmp_path / "central"), "--http-port", str(port),
             "--mqtt-host", f"{a.host}:{a.port},{b.host}:{b.port}", "--prefix", prefix,
             "--bridge-id", f"bridge-{prefix}"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        started = time.monotonic() + 90  # a whole central process: slow on a loaded machine
        while b"gridwatch central: registry API" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < started, log.read_text()
            time.sleep(0.1)
        assert f"broker {a.host}:{a.port}, {b.host}:{b.port} (external)" in log.read_text()
        on = _wait_health(port, 1)
        assert {"/bridge/lanes/telemetry", "/bridge/lanes/events", "/registry downlink"} <= set(on)
        kill(a)
        began = time.monotonic()
        _wait_health(port, 2)
        moved_s = time.monotonic() - began
        proc.terminate()
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "Traceback" not in log.read_text(), log.read_text()
    assert moved_s < 5, moved_s
