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
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path

from drivers import DRIVERS
from drivers.base import Driver
from drivers.errors import UnknownPoint
from drivers.health import CHANGES
from edge.outbox import PRIO_TELEMETRY, Outbox, OutboxBusy
from edge.pipeline import Pipeline
from edge.remote import Remote
from edge.uplink import Uplink
from gridwatch.ground.contract import BusHealth, DeviceHealth, GatewayHealth, Topics, new_id
from gridwatch.ground.gatewayconf import (
    GatewayConfig,
    ResolvedDevice,
    load_gateway,
    resolve_with_profiles,
)
from gridwatch.ground.yamlconf import ConfigError

logger = logging.getLogger(__name__)

TICK_S = 0.2  # batch linger and no-data check period
HEALTH_ON_CHANGE_S = 2.0
"""At most one report on a change per this many seconds: a flapping bus must not flood the
uplink with reports, and what changed in between goes in the next one."""


class EdgeAgent:
    """Everything one gateway runs, wired together; ``run`` until cancelled."""

    def __init__(
        self,
        cfg: GatewayConfig,
        devices: list[ResolvedDevice],
        base_dir: Path = Path("."),
        clock: Callable[[], float] = time.time,
        metrics_port: int | None = None,
    ) -> None:
        self.metrics_port = metrics_port
        self.metrics_url = ""
        path = Path(cfg.outbox.path)
        path = path if path.is_absolute() else base_dir / path
        self.outbox = Outbox(path, cfg.outbox.max_bytes, cfg.outbox.keep_acked_s)
        self.outbox_dir = path.parent
        stored = path.parent / "pushed-config.json"
        cfg, devices = _newer_pushed_config(cfg, devices, stored)
        self.cfg, self.clock = cfg, clock
        gw = cfg.gateway.id
        self.topics = Topics(cfg.mqtt.prefix)
        self.pipeline = Pipeline(
            gw, devices, self.outbox, self.topics, clock, batch_max=cfg.mqtt.batch_max
        )
        self.uplink = Uplink(
            cfg.mqtt, gw, self.outbox, self.pipeline, self.topics, cfg.version, clock
        )
        self.outbox.notify = self.uplink.notify
        self.remote = Remote(
            cfg, self.outbox, self.topics, stored, self.reconfigure, self.write, clock
        )
        self.uplink.on_down = self.remote.handle
        self.drivers = _build_drivers(cfg, devices)
        self._driver_tasks: list[asyncio.Task[None]] = []
        self._tg: asyncio.TaskGroup | None = None

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.uplink.run(), name="uplink")
                tg.create_task(self._batcher(), name="batcher")
                tg.create_task(self._health(), name="health")
                if self.metrics_port is not None:
                    tg.create_task(self._metrics(self.metrics_port), name="metrics")
                self._start_drivers()
        finally:
            # whatever the drivers read before the stop is kept for the next start
            self.pipeline.flush()
            self.outbox.close()

    def _start_drivers(self) -> None:
        assert self._tg is not None
        self._driver_tasks = [
            self._tg.create_task(drv.run(self.pipeline.sink), name=f"driver:{bus_id}")
            for bus_id, drv in self.drivers.items()
        ]

    async def reconfigure(self, cfg: GatewayConfig, devices: list[ResolvedDevice]) -> None:
        """Apply a new device list without a restart; outbox and active alerts are kept."""
        for task in self._driver_tasks:
            task.cancel()
        await asyncio.gather(*self._driver_tasks, return_exceptions=True)
        try:
            self.pipeline.flush()
            self.pipeline.reconfigure(devices)
            self.cfg = cfg
            self.drivers = _build_drivers(cfg, devices)
        finally:  # whatever failed, the field is polled again (with the old devices if need be)
            self._start_drivers()

    async def write(self, device: str, point: str, value: float | int | bool) -> None:
        dev = self.pipeline.devices.get(device)
        if dev is None:
            raise UnknownPoint(f"no device {device!r} on this gateway", device_id=device)
        await self.drivers[dev.bus.id].write(device, point, value)

    async def _batcher(self) -> None:
        failures = 0
        while True:
            await asyncio.sleep(max(self.cfg.mqtt.batch_linger_s, 0.01))
            try:
                self.pipeline.flush()
                self.pipeline.tick()
                failures = 0
            except (sqlite3.Error, OSError) as exc:  # disk full: the polls wait in the journal
                failures += 1
                if failures == 1 or failures % 100 == 0:
                    logger.error("outbox write failed (%d in a row), retrying: %s", failures, exc)

    async def _metrics(self, port: int) -> None:
        # loaded only when asked for: prometheus-client and aiohttp cost a gateway ~9 MB of RSS
        from edge.metrics import edge_registry
        from gridwatch.ground.metrics import serve_metrics

        async with serve_metrics(edge_registry(self), "127.0.0.1", port) as url:
            self.metrics_url = url
            await asyncio.Future()  # until cancelled

    async def _health(self) -> None:
        """A report every ``health_interval_s``, and one at once (at most one per
        ``HEALTH_ON_CHANGE_S``) when a bus goes down or comes back or a device stops or starts
        answering: the centre should not show a bus down for a period after it is back."""
        loop = asyncio.get_running_loop()
        changed = asyncio.Event()
        CHANGES.listeners.add(changed.set)
        try:
            due, last = loop.time(), -HEALTH_ON_CHANGE_S
            while True:
                now = loop.time()
                if now >= due or (changed.is_set() and now >= last + HEALTH_ON_CHANGE_S):
                    changed.clear()
                    try:
                        self._report_health()
                    except (sqlite3.Error, OSError) as exc:  # disk full: skip this report
                        logger.error("health report not queued: %s", exc)
                    last = now
                    if now >= due:
                        due = now + self.cfg.health_interval_s
                if changed.is_set():  # rate-limited: the next report may go at last + the limit
                    await asyncio.sleep(max(min(due, last + HEALTH_ON_CHANGE_S) - now, 0))
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), max(due - loop.time(), 0))
        finally:
            CHANGES.listeners.discard(changed.set)

    def _report_health(self) -> None:
        devices: list[DeviceHealth] = []
        buses: list[BusHealth] = []
        for drv in self.drivers.values():
            devices.extend(drv.health())
            buses.append(drv.bus_health())
        rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        disk = shutil.disk_usage(self.outbox_dir)  # the outbox's own disk: what fills up
        gw = self.cfg.gateway.id
        waiting = self.outbox.waiting(self.clock())  # also while the uplink is down

        def build(seq: int) -> bytes:
            msg = GatewayHealth(
                id=new_id(), gateway=gw, seq=seq, session=self.pipeline.session,
                ts=int(self.clock() * 1000), interval_s=self.cfg.health_interval_s,
                cpu_percent=_cpu_percent(),
                memory_mb=round(rss_mb, 1), disk_free_mb=disk.free // 2**20,
                outbox_depth=self.outbox.depth, outbox_bytes=self.outbox.bytes,
                outbox_dropped=self.outbox.dropped, uplink_reconnects=self.uplink.reconnects,
                outbox_unacked=waiting.count,
                outbox_unacked_oldest_s=(
                    None if waiting.oldest_s is None else round(waiting.oldest_s, 1)
                ),
                devices=devices, buses=buses,
            )  # fmt: skip
            return msg.model_dump_json().encode()

        self.outbox.enqueue(PRIO_TELEMETRY, "health", self.topics.health(gw), build)


def _build_drivers(cfg: GatewayConfig, devices: list[ResolvedDevice]) -> dict[str, Driver]:
    drivers: dict[str, Driver] = {}
    for bus in cfg.buses:
        mine = [d for d in devices if d.bus.id == bus.id]
        if mine:
            drivers[bus.id] = DRIVERS[bus.type](bus, mine)
    return drivers


def _newer_pushed_config(
    cfg: GatewayConfig, devices: list[ResolvedDevice], stored: Path
) -> tuple[GatewayConfig, list[ResolvedDevice]]:
    """A config pushed by the registry outranks the file the gateway was installed with."""
    if not stored.exists():
        return cfg, devices
    try:
        pushed = GatewayConfig.model_validate_json(stored.read_text())
        if pushed.version <= cfg.version:
            return cfg, devices
        return pushed, resolve_with_profiles(pushed, str(stored))
    except (ValueError, ConfigError) as exc:
        logger.error("ignoring stored pushed config %s: %s", stored, exc)
        return cfg, devices


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
    try:
        agent = EdgeAgent(cfg, devices, Path(os.getcwd()), metrics_port=args.metrics_port)
    except OutboxBusy as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(_run_until_signal(agent))


async def _run_until_signal(agent: EdgeAgent) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    logger.info(
        "edge agent %s: %d devices, uplink %s",
        agent.cfg.gateway.id, len(agent.pipeline.devices),
        ", ".join(f"{b.host}:{b.port}" for b in agent.cfg.mqtt.brokers()),
    )  # fmt: skip
    with contextlib.suppress(asyncio.CancelledError):
        await agent.run()
    logger.info("edge agent stopped")
    return 0
