"""Uplink reconnect: how long after the broker's return the edge's uplink is connected again.

Runs the edge's uplink (outbox, pipeline, uplink: the code ``gridwatch edge run`` runs) against a
mosquitto of its own, then stops the broker for ``--outage`` seconds and starts it again, ``--rounds``
times. Each round is timed from the moment the restarted broker accepts TCP connections to the
moment the uplink has connected and sent its birth message. Target: within 2 s (shared/DESIGN.md).

    .venv/bin/python -m bench.reconnect_bench [--rounds 10] [--outage 5]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from edge.outbox import Outbox
from edge.pipeline import Pipeline
from edge.uplink import Uplink
from gridwatch.ground.contract import Topics
from gridwatch.ground.gatewayconf import MqttUplink
from tests.fieldkit import gateway_config
from tests.services import Mosquitto


async def run(args: argparse.Namespace, work: Path) -> None:
    broker = Mosquitto(work / "mq").start()
    cfg, devices, _ = gateway_config(work, broker.port, "bench")
    box = Outbox(work / "outbox.db", 10**8)
    topics = Topics("bench")
    pipe = Pipeline(cfg.gateway.id, devices, box, topics, time.time)
    uplink = Uplink(MqttUplink(port=broker.port, prefix="bench"), cfg.gateway.id, box, pipe,
                    topics, 1, time.time)  # fmt: skip
    box.notify = uplink.notify
    task = asyncio.create_task(uplink.run())
    took: list[float] = []
    try:
        await uplink.wait_until(lambda u: u.connected, within_s=10)
        for _ in range(args.rounds):
            await asyncio.to_thread(broker.stop)
            await uplink.wait_until(lambda u: not u.connected, within_s=10)
            await asyncio.sleep(args.outage)  # the outage itself: the uplink retries meanwhile
            await asyncio.to_thread(broker.start)  # returns once the broker accepts connections
            back = time.perf_counter()
            await uplink.wait_until(lambda u: u.connected, within_s=30)
            took.append(time.perf_counter() - back)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        box.close()
        broker.stop()
    ms = sorted(t * 1000 for t in took)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    print(f"uplink back after a {args.outage:g} s broker outage, {len(ms)} rounds: "
          f"p50 {statistics.median(ms):.0f} ms, p99 {p99:.0f} ms, max {ms[-1]:.0f} ms "
          f"(target <= 2000 ms)")  # fmt: skip
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
          f"Python {platform.python_version()}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--outage", type=float, default=5.0, help="seconds the broker is down")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the uplink's own outage warnings are expected
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(run(args, Path(d)))


if __name__ == "__main__":
    main()
