"""The edge agent's composition root: ``gridwatch edge run -c gateway.yaml``.

Builds outbox, pipeline, drivers and uplink and runs them as named tasks in one TaskGroup. On
SIGTERM/SIGINT the tasks are cancelled, what the drivers had read is flushed into the outbox, and
the outbox is closed last, so a clean stop loses nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from drivers import DRIVERS
from drivers.base import Driver
from edge.outbox import PRIO_TELEMETRY, Outbox
from edge.pipeline import Pipeline
from edge.uplink import Uplink
from gridwatch.contract import DeviceHealth, GatewayHealth, Topics, new_id
from gridwatch.gatewayconf import GatewayConfig, ResolvedDevice, load_gateway
from gridwatch.yamlconf import ConfigError

logger = logging.getLogger(__name__)

TICK_S = 0.2  # batch linger and no-data check period


class EdgeAgent:
    """Everything one gateway runs, wired together; ``run`` until cancelled."""

    def __init__(
        self,
        cfg: GatewayConfig,
        devices: list[ResolvedDevice],
        base_dir: Path = Path("."),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg, self.clock = cfg, clock
        gw = cfg.gateway.id
        path = Path(cfg.outbox.path)
        self.outbox = Outbox(path if path.is_absolute() else base_dir / path, cfg.outbox.max_bytes)
        self.topics = Topics(cfg.mqtt.prefix)
        self.pipeline = Pipeline(
            gw, devices, self.outbox, self.topics, clock, batch_max=cfg.mqtt.batch_max
        )
        self.uplink = Uplink(
            cfg.mqtt, gw, self.outbox, self.pipeline, self.topics, cfg.version, clock
        )
        self.outbox.notify = self.uplink.notify
        self.drivers: dict[str, Driver] = {}
        for bus in cfg.buses:
            mine = [d for d in devices if d.bus.id == bus.id]
            if mine:
                self.drivers[bus.id] = DRIVERS[bus.type](bus, mine)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self.uplink.run(), name="uplink")
                tg.create_task(self._batcher(), name="batcher")
                tg.create_task(self._health(), name="health")
                for bus_id, drv in self.drivers.items():
                    tg.create_task(drv.run(self.pipeline.sink), name=f"driver:{bus_id}")
        finally:
            # whatever the drivers read before the stop is kept for the next start
            self.pipeline.flush()
            self.outbox.close()

    async def _batcher(self) -> None:
        while True:
            await asyncio.sleep(max(self.cfg.mqtt.batch_linger_s, 0.01))
            self.pipeline.flush()
            self.pipeline.tick()

    async def _health(self) -> None:
        while True:
            self._report_health()
            await asyncio.sleep(self.cfg.health_interval_s)

    def _report_health(self) -> None:
        devices: list[DeviceHealth] = []
        for drv in self.drivers.values():
            devices.extend(drv.health())
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        disk = shutil.disk_usage(
            Path(self.cfg.outbox.path).parent if Path(self.cfg.outbox.path).parent.exists() else "."
        )
        gw = self.cfg.gateway.id

        def build(seq: int) -> bytes:
            msg = GatewayHealth(
                id=new_id(), gateway=gw, seq=seq, session=self.pipeline.session,
                ts=int(self.clock() * 1000), cpu_percent=_cpu_percent(),
                memory_mb=round(rss_mb, 1), disk_free_mb=disk.free // 2**20,
                outbox_depth=self.outbox.depth, outbox_bytes=self.outbox.bytes,
                outbox_dropped=self.outbox.dropped, uplink_reconnects=self.uplink.reconnects,
                devices=devices,
            )  # fmt: skip
            return msg.model_dump_json().encode()

        self.outbox.enqueue(PRIO_TELEMETRY, "health", self.topics.health(gw), build)


_last_cpu: tuple[float, float] = (time.monotonic(), time.process_time())


def _cpu_percent() -> float:
    """This process's CPU use since the previous call."""
    global _last_cpu
    now = (time.monotonic(), time.process_time())
    wall, cpu = now[0] - _last_cpu[0], now[1] - _last_cpu[1]
    _last_cpu = now
    return round(100 * cpu / wall, 1) if wall > 0 else 0.0


def main(args: argparse.Namespace) -> int:
    try:
        cfg, devices = load_gateway(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 1
    if args.validate_config:
        print(f"{args.config}: ok ({len(devices)} devices on {len(cfg.buses)} buses)")
        return 0
    return asyncio.run(_run_until_signal(EdgeAgent(cfg, devices, Path(os.getcwd()))))


async def _run_until_signal(agent: EdgeAgent) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    logger.info(
        "edge agent %s: %d devices, uplink %s:%d",
        agent.cfg.gateway.id, len(agent.pipeline.devices), agent.cfg.mqtt.host, agent.cfg.mqtt.port,
    )  # fmt: skip
    with contextlib.suppress(asyncio.CancelledError):
        await agent.run()
    logger.info("edge agent stopped")
    return 0
