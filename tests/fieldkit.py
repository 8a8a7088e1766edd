"""Building blocks for tests that run a gateway: configs on free ports, an MQTT listener."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

from edge.app import EdgeAgent
from gridwatch.ground.gatewayconf import GatewayConfig, ResolvedDevice, load_gateway
from tests.services import free_port

CABINET = Path(__file__).resolve().parent / "data" / "cabinet.yaml"


def gateway_config(
    tmp_path: Path, mqtt_port: int, prefix: str, modbus_port: int | None = None, **mqtt: Any
) -> tuple[GatewayConfig, list[ResolvedDevice], Path]:
    """The test cabinet's devices, on ports and a topic prefix of this test's own."""
    cfg = yaml.safe_load(CABINET.read_text())
    cfg["mqtt"].update({"port": mqtt_port, "prefix": prefix, "batch_linger_s": 0.05, **mqtt})
    cfg["outbox"]["path"] = str(tmp_path / "outbox.db")
    cfg["health_interval_s"] = 3600
    port = modbus_port or free_port()
    for bus in cfg["buses"]:
        bus["port"] = port
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    gw, devices = load_gateway(path)
    return gw, devices, path


class Listener:
    """Collects every message under a topic filter; tests wait on what they expect to see."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, dict[str, Any], bool]] = []
        self._changed = asyncio.Condition()

    async def _collect(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            payload = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
            async with self._changed:
                self.messages.append((str(msg.topic), payload, msg.retain))
                self._changed.notify_all()

    def on(self, leaf: str) -> list[dict[str, Any]]:
        return [p for t, p, _ in self.messages if t.endswith("/" + leaf)]

    async def wait_for(self, predicate: Any, within_s: float = 15.0) -> None:
        async with asyncio.timeout(within_s), self._changed:
            await self._changed.wait_for(lambda: predicate(self))


@asynccontextmanager
async def agent_running(agent: EdgeAgent) -> AsyncIterator[EdgeAgent]:
    """Run ``agent`` for the block; a stop that hangs fails with every task's stack."""
    task = asyncio.create_task(agent.run(), name="edge")
    try:
        yield agent
    finally:
        task.cancel()
        done, _ = await asyncio.wait([task], timeout=10)
        if not done:
            for t in asyncio.all_tasks():
                t.print_stack(file=sys.stderr)
            raise AssertionError("the edge agent did not stop within 10 s of its cancellation")
        with contextlib.suppress(asyncio.CancelledError):
            await task


def running(
    cfg: GatewayConfig, devices: list[ResolvedDevice]
) -> AbstractAsyncContextManager[EdgeAgent]:
    return agent_running(EdgeAgent(cfg, devices))


@asynccontextmanager
async def listen(
    port: int, topic: str, username: str | None = None, password: str | None = None
) -> AsyncIterator[Listener]:
    listener = Listener()
    async with aiomqtt.Client("127.0.0.1", port, username=username, password=password) as client:
        await client.subscribe(topic, qos=1)
        task = asyncio.create_task(listener._collect(client))
        try:
            yield listener
        finally:
            task.cancel()
