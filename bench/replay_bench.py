"""Replay after an outage: how fast the outbox drains 100,000 buffered readings, in order.

Fills an outbox while "offline" (the same pipeline the edge runs), then starts a real mosquitto
and the uplink, and times until a subscriber has every reading. Target: >= 50,000 readings/s.

    .venv/bin/python -m bench.replay_bench [--readings 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import tempfile
import time
from pathlib import Path

import aiomqtt

from drivers.base import PollOutcome, Sample
from edge.outbox import Outbox
from edge.pipeline import Pipeline
from edge.uplink import Uplink
from gridwatch.ground.contract import Quality, Topics
from gridwatch.ground.gatewayconf import MqttUplink
from tests.fieldkit import gateway_config
from tests.services import Mosquitto


def fill(pipe: Pipeline, readings: int) -> None:
    t0 = 1_700_000_000_000
    for i in range(readings // 10):
        ts = t0 + i
        samples = [Sample("wl-001", f"p{k}", float(i), "m", ts, Quality.GOOD) for k in range(10)]
        pipe.sink(PollOutcome("wl-001", ts, samples, True))
    pipe.flush()


async def run(readings: int, work: Path) -> None:
    broker = Mosquitto(work / "mq").start()
    try:
        cfg, devices, _ = gateway_config(work, broker.port, "bench")
        box = Outbox(work / "replay.db", 10**9)
        topics = Topics("bench")
        pipe = Pipeline(cfg.gateway.id, devices, box, topics, time.time, batch_max=500)
        t_fill = time.perf_counter()
        fill(pipe, readings)
        fill_s = time.perf_counter() - t_fill
        print(
            f"buffered {readings} readings in {box.depth} messages, {box.bytes / 2**20:.1f} MiB, in {fill_s:.2f}s"
        )
        got = 0
        last = -1.0
        in_order = True
        done = asyncio.Event()
        async with aiomqtt.Client("127.0.0.1", broker.port, max_queued_incoming_messages=0) as sub:
            await sub.subscribe(topics.telemetry(cfg.gateway.id), qos=1)

            async def count() -> None:
                nonlocal got, last, in_order
                async for msg in sub.messages:
                    for r in json.loads(bytes(msg.payload))["readings"]:  # type: ignore[arg-type]
                        in_order &= r["value"] >= last
                        last = r["value"]
                    got += len(json.loads(bytes(msg.payload))["readings"])  # type: ignore[arg-type]
                    if got >= readings:
                        done.set()

            counter = asyncio.create_task(count())
            uplink = Uplink(
                MqttUplink(port=broker.port, prefix="bench"),
                cfg.gateway.id,
                box,
                pipe,
                topics,
                1,
                time.time,
            )
            box.notify = uplink.notify
            cpu0, t0 = time.process_time(), time.perf_counter()
            sender = asyncio.create_task(uplink.run())
            await asyncio.wait_for(done.wait(), 120)
            wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            sender.cancel()
            counter.cancel()
            await asyncio.gather(sender, counter, return_exceptions=True)  # a quiet teardown
        print(
            f"replayed {got} readings in {wall:.2f}s: {got / wall:,.0f} readings/s "
            f"(in order: {in_order}; outbox left: {box.depth}; CPU of this process incl. subscriber {cpu:.2f}s)"
        )
        print(
            f"machine: {platform.machine()}, {platform.python_implementation()} {platform.python_version()}, "
            f"{len(__import__('os').sched_getaffinity(0))} cores"
        )
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--readings", type=int, default=100_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        asyncio.run(run(args.readings, Path(d)))


if __name__ == "__main__":
    main()
