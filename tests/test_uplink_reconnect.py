"""The edge's uplink after a broker crash (SIGKILL: the broker forgets the retained Birth and the
will): back within a few seconds of the broker's return, with a new session number and its Birth
retained again."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

from edge.outbox import Outbox
from edge.pipeline import Pipeline
from edge.uplink import Uplink
from gridwatch.ground.contract import Birth, Topics
from gridwatch.ground.gatewayconf import MqttUplink
from tests.fieldkit import gateway_config, listen
from tests.services import Mosquitto


async def test_uplink_is_back_with_a_new_session_after_the_broker_is_killed(
    tmp_path: Path, prefix: str
) -> None:
    broker = Mosquitto(tmp_path / "mq").start()
    cfg, devices, _ = gateway_config(tmp_path, broker.port, prefix)
    box = Outbox(tmp_path / "outbox.db", 10**7)
    topics = Topics(prefix)
    pipe = Pipeline(cfg.gateway.id, devices, box, topics, time.time)
    uplink = Uplink(MqttUplink(port=broker.port, prefix=prefix), cfg.gateway.id, box, pipe,
                    topics, 1, time.time)  # fmt: skip
    box.notify = uplink.notify
    task = asyncio.create_task(uplink.run())
    try:
        await uplink.wait_until(lambda u: u.connected, within_s=10)
        first = pipe.session
        broker.restart(signal.SIGKILL)
        back = time.monotonic()
        await uplink.wait_until(lambda u: u.reconnects == 1 and u.connected, within_s=10)
        assert time.monotonic() - back < 3
        assert pipe.session == first + 1
        async with listen(broker.port, topics.status(cfg.gateway.id)) as seen:
            await seen.wait_for(lambda s: len(s.messages) == 1)
        birth = Birth.model_validate(seen.messages[0][1])
        assert birth.session == first + 1 and seen.messages[0][2]  # retained again
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        box.close()
        broker.stop()
