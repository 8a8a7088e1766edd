"""The centre's long-lived MQTT sessions come back after the broker is killed (SIGKILL: it forgets
every session and subscription) and started again: the bridge's two lanes ingest again, and the
platform publisher publishes again. (The registry's downlink: test_downlink_faults.py; the
edge's uplink: test_outage.py and bench/reconnect_bench.py.)"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from cloud_bridge import SqliteSink
from device_registry import RegistryStore
from device_registry.delivery.runtime import Delivery
from device_registry.inventory.downlink import BrokerSettings
from gridwatch.ground.contract import Topics
from tests._central_helpers import (
    batch,
    birth,
    bridge_config,
    bridge_on,
    now_ms,
    publisher,
    reading,
    until,
)
from tests._ops_helpers import registry, smoke
from tests.fieldkit import listen
from tests.services import Mosquitto


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    mq = Mosquitto(tmp_path / "mq").start()
    yield mq
    mq.stop()


async def test_bridge_lanes_ingest_again_after_the_broker_is_killed(
    broker: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    store = await RegistryStore.open(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    sink = await SqliteSink.open(tmp_path / "telemetry.db", retention_hours=1)
    topics, gw, t = Topics(prefix), prefix, now_ms()
    try:
        cfg = bridge_config(broker.host, broker.port, prefix, tmp_path)
        async with bridge_on(cfg, store, sink) as b:
            broker.restart(signal.SIGKILL)
            lanes = list(b.sessions.values())
            for lane in lanes:  # each lane noticed the loss and is subscribed again
                await lane.watch.until(
                    lambda s=lane: s.state.outages == 1 and s.state.connected, 10
                )
            async with publisher(broker.host, broker.port) as pub:
                await pub.publish(topics.status(gw), birth(gw, 1, ["d1"]).model_dump_json(), qos=1)
                msg = batch(gw, [reading("d1", "level", 1.0, t)])
                await pub.publish(topics.telemetry(gw), msg.model_dump_json(), qos=1)
            await until(b, lambda s: s.ingested["telemetry"] == 1 and s.ingested["birth"] == 1)
        assert await sink.history(gw, "d1", "level") == [(t, 1.0, "good")]
    finally:
        await sink.close()
        await store.close()


async def test_platform_publisher_publishes_again_after_the_broker_is_killed(
    broker: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    target = BrokerSettings(broker.host, broker.port, prefix, client_id=f"reg-{prefix}")
    async with registry(tmp_path, Delivery(mqtt=target, poll_s=0.2)) as reg:
        async with listen(broker.port, f"{prefix}/platform/#") as seen:
            await reg.ingest(smoke("before"))
            await seen.wait_for(lambda s: len(s.messages) == 1)
        broker.restart(signal.SIGKILL)
        async with listen(broker.port, f"{prefix}/platform/#") as seen:
            await reg.ingest(smoke("after"))
            # at least once: "before" may come again if the kill fell between its PUBACK and
            # the cursor's update
            await seen.wait_for(lambda s: "after" in [p["alert_id"] for _, p, _ in s.messages])
