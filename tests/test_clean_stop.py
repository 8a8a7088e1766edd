"""A gateway stopped cleanly says so: issue 12 #4 (an edge stopped with SIGTERM read "online" until
its health reports went missing, because a broker drops the will of a client that disconnects
cleanly). The edge agent runs as its own process, the bridge and the registry store in this one."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiomqtt
import pytest

from cloud_bridge import SqliteSink
from device_registry import RegistryStore
from gridwatch.ground.contract import Birth, Death, Topics
from tests._central_helpers import bridge_config, bridge_on, until, wait_for_log
from tests.fieldkit import gateway_config
from tests.services import Mosquitto


async def retained_status(broker: Mosquitto, topic: str) -> Birth | Death:
    """What the broker keeps on the status topic (what a centre started now would read)."""
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for m in client.messages:
                assert m.retain and isinstance(m.payload, bytes)
                kind = Birth if b'"birth"' in m.payload else Death
                return kind.model_validate_json(m.payload)
    raise AssertionError("no retained status")


async def online(store: RegistryStore, gateway: str) -> bool:
    return next(g.online for g in await store.gateways() if g.id == gateway)


def start_edge(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        edge = subprocess.Popen(
            [sys.executable, "-m", "gridwatch.top.cli", "edge", "run", "-c", str(config)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_for_log(edge, log, b"uplink: session")
    return edge


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_a_clean_stop_publishes_the_death_and_the_registry_marks_the_gateway_offline(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path, sig: int
) -> None:
    cfg, _, path = gateway_config(tmp_path, mosquitto.port, prefix)
    gw, topic = cfg.gateway.id, Topics(prefix).status(cfg.gateway.id)
    store = await RegistryStore.open(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    sink = await SqliteSink.open(tmp_path / "history.db")
    bridge_cfg = bridge_config("127.0.0.1", mosquitto.port, prefix, tmp_path / "central")
    log = tmp_path / "edge.log"
    try:
        async with bridge_on(bridge_cfg, store, sink) as bridge:
            edge = await asyncio.to_thread(start_edge, path, log)
            try:
                await until(bridge, lambda s: s.ingested["birth"] >= 1)
                assert await online(store, gw)
                birth = await retained_status(mosquitto, topic)
                assert isinstance(birth, Birth)
                edge.send_signal(sig)
                assert await asyncio.to_thread(edge.wait, 10) == 0
            finally:
                if edge.poll() is None:
                    edge.kill()
            death = await retained_status(mosquitto, topic)
            assert death == Death(gateway=gw, session=birth.session)  # the last session's
            await until(bridge, lambda s: s.ingested["death"] >= 1)
            assert not await online(store, gw)
    finally:
        await sink.close()
        await store.close()
    assert f"uplink: stopped; session {birth.session} ended with its Death" in log.read_text()


async def test_a_stop_does_not_hang_on_a_broker_that_answers_nothing(
    tmp_path: Path, prefix: str
) -> None:
    """The broker's process frozen (SIGSTOP): the TCP connection stands, nothing is answered. The
    Death waits at most its bound, the agent still exits promptly and says why."""
    broker = Mosquitto(tmp_path / "mq").start()
    assert broker.proc is not None
    _, _, path = gateway_config(tmp_path, broker.port, prefix)
    log = tmp_path / "edge.log"
    edge = await asyncio.to_thread(start_edge, path, log)
    try:
        broker.proc.send_signal(signal.SIGSTOP)
        began = time.monotonic()
        edge.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(edge.wait, 15) == 0
        took = time.monotonic() - began
    finally:
        if edge.poll() is None:
            edge.kill()
        broker.proc.send_signal(signal.SIGCONT)
        broker.stop()
    assert "mqtt uplink: stopping without a goodbye on 127.0.0.1:" in log.read_text()
    assert "no answer within 2.0 s" in log.read_text()
    assert took < 9, took  # the 2 s bound on the Death, then the DISCONNECT's own 5 s at most
