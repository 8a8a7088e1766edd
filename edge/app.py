"""The edge agent's composition root: ``gridwatch edge run -c gateway.yaml``.

Builds outbox, pipeline, drivers and uplink and runs them as named tasks in one TaskGroup. On
SIGTERM/SIGINT the tasks are cancelled, what the drivers had read is flushed into the outbox, and
the outbox is closed last, so a clean stop loses nothing.

As a service (docs/edge.md): it tells systemd when it is ready and pings the watchdog only while
healthy (``EdgeAgent.unhealthy`` says what that means), writes its status file for
``gridwatch edge status`` (``edge.status``), and on SIGHUP reloads its config file the way a
config pushed by the centre is applied (``Remote.apply_file``).
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
from drivers.base import Driver, PollOutcome
from drivers.errors import UnknownPoint
from drivers.health import CHANGES
from edge.outbox import PRIO_TELEMETRY, Outbox, OutboxBusy
from edge.pipeline import Pipeline
from edge.remote import Remote
from edge.status import (
    STATUS_EVERY_S,
    LastPoll,
    RecentErrors,
    outbox_summary,
    status_path,
    write_atomic,
)
from edge.uplink import Uplink
from gridwatch.ground import sdnotify
from gridwatch.ground.contract import BusHealth, DeviceHealth, GatewayHealth, Topics, new_id
from gridwatch.ground.gatewayconf import (
    GatewayConfig,
    ResolvedDevice,
    load_gateway,
    resolve_with_profiles,
)
from gridwatch.ground.logfmt import log_context
from gridwatch.ground.yamlconf import ConfigError

logger = logging.getLogger(__name__)

TICK_S = 0.2  # batch linger and no-data check period
STUCK_GRACE_S = 5.0
"""Slack on top of twice a period before a loop counts as stuck: a loaded box runs late."""
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
        config_file: str | None = None,
    ) -> None:
        self.metrics_port = metrics_port
        self.config_file = config_file
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
        # what the service face reports (status file, watchdog)
        self.status_file = status_path(path)
        self.started_at = clock()
        self.last_outcomes: dict[str, LastPoll] = {}
        self.batcher_ok_at = time.monotonic()  # the last batcher pass that reached the outbox
        self.outbox_error = ""  # the last batcher pass's failure; "" once one succeeds
        self.recent_errors = RecentErrors()
        self._outcomes_since = time.monotonic()  # devices count as stuck from here
        self._status_failed = False  # the last status write failed (logged once per streak)

    async def run(self) -> None:
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                tg.create_task(self.uplink.run(), name="uplink")
                tg.create_task(self._batcher(), name="batcher")
                tg.create_task(self._health(), name="health")
                tg.create_task(self._supervise(), name="supervise")
                if self.metrics_port is not None:
                    tg.create_task(self._metrics(self.metrics_port), name="metrics")
                self._start_drivers()
        finally:
            # whatever the drivers read before the stop is kept for the next start
            self.pipeline.flush()
            self._write_status(stopped=True)
            self.outbox.close()

    def _start_drivers(self) -> None:
        assert self._tg is not None
        self._outcomes_since = time.monotonic()
        self.last_outcomes = {  # a device a reload removed is no longer reported
            d: o for d, o in self.last_outcomes.items() if d in self.pipeline.devices
        }
        self._driver_tasks = [
            self._tg.create_task(drv.run(self._sink), name=f"driver:{bus_id}")
            for bus_id, drv in self.drivers.items()
        ]

    def _sink(self, outcome: PollOutcome) -> None:
        self.last_outcomes[outcome.device] = LastPoll(
            outcome.ok, outcome.ts, outcome.error, time.monotonic()
        )
        self.pipeline.sink(outcome)

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
                self.batcher_ok_at, self.outbox_error = time.monotonic(), ""
            except (sqlite3.Error, OSError) as exc:  # disk full: the polls wait in the journal
                failures += 1
                self.outbox_error = str(exc)
                if failures == 1 or failures % 100 == 0:
                    logger.error("outbox write failed (%d in a row), retrying: %s", failures, exc)

    # --- the service face: readiness, watchdog, status file, reload -----------------------------
    def unhealthy(self) -> list[str]:
        """Why the agent should not ping systemd's watchdog; empty: healthy. Healthy means:

        - the batcher (the loop that moves polls into the outbox) completed a pass within twice
          its period plus ``STUCK_GRACE_S``, and its last outbox write did not fail (a full or
          read-only disk makes it fail);
        - no driver task has ended;
        - every Modbus device produced a poll outcome (an answer or a failure, both count)
          within twice its interval plus ``STUCK_GRACE_S``: its poll loop is turning.

        An unreachable broker or device is not unhealthy: a restart cures neither, and the
        outbox is made for outages. ``gridwatch edge status`` reports those.
        """
        now = time.monotonic()
        problems = []
        limit = 2 * max(self.cfg.mqtt.batch_linger_s, TICK_S) + STUCK_GRACE_S
        if now - self.batcher_ok_at > limit:
            problems.append(f"outbox writes stalled for {now - self.batcher_ok_at:.0f} s"
                            + (f": {self.outbox_error}" if self.outbox_error else ""))  # fmt: skip
        elif self.outbox_error:
            problems.append(f"outbox write failed: {self.outbox_error}")
        problems += [f"driver {t.get_name()} ended" for t in self._driver_tasks if t.done()]
        for dev in self.pipeline.devices.values():
            if not dev.bus.type.startswith("modbus"):
                continue  # MQTT sensors speak when they like
            polled = self.last_outcomes.get(dev.id)
            last = polled.at if polled else self._outcomes_since
            if now - last > 2 * dev.interval_s + STUCK_GRACE_S:
                problems.append(f"device {dev.id}: no poll outcome for {now - last:.0f} s")
        return problems

    def status(self) -> dict[str, object]:
        """The status file's content (``edge.status``)."""
        st = self.uplink.mqtt.state
        outbox: dict[str, object] = {"depth": self.outbox.depth, "bytes": self.outbox.bytes,
                                     "dropped": self.outbox.dropped}  # fmt: skip
        try:
            outbox |= outbox_summary(self.outbox.db)
        except sqlite3.Error as exc:
            outbox["error"] = str(exc)
        return {
            "gateway": self.cfg.gateway.id, "pid": os.getpid(), "started_at": self.started_at,
            "written_at": self.clock(), "config_version": self.cfg.version,
            "config_file": self.config_file,
            "uplink": {"connected": self.uplink.connected, "since": st.since,
                       "endpoint": st.endpoint, "last_error": st.last_error,
                       "outages": st.outages, "session": self.pipeline.session},
            "outbox": outbox,
            "devices": {d: self.last_outcomes[d].shown() if d in self.last_outcomes
                        else {"ok": None, "ts": None, "error": ""}
                        for d in self.pipeline.devices},
            "brokers": [f"{b.host}:{b.port}" for b in self.cfg.mqtt.brokers()],
            "errors": list(self.recent_errors.records),
            "unhealthy": self.unhealthy(),
        }  # fmt: skip

    def _write_status(self, stopped: bool = False) -> bool:
        """The status file now; ``stopped``: the last one, of a clean stop. False if not written."""
        try:
            status = self.status()
            if stopped:
                status["stopped_at"] = status["written_at"]
            write_atomic(self.status_file, status)
        except (OSError, sqlite3.Error) as exc:  # a full disk: the outbox's own errors say more
            logger.log(logging.DEBUG if self._status_failed else logging.ERROR,
                       "status file %s not written: %s", self.status_file, exc)  # fmt: skip
            self._status_failed = True
            return False
        self._status_failed = False
        return True

    async def _supervise(self) -> None:
        """Readiness once every task is started, then the status file and watchdog pings."""
        sdnotify.notify(READY=1, STATUS=self._one_line())
        ping_every = sdnotify.watchdog_interval(os.environ, os.getpid())
        period = min(STATUS_EVERY_S, ping_every or STATUS_EVERY_S)
        while True:
            problems = self.unhealthy()
            if ping_every is not None and not problems:
                sdnotify.notify(WATCHDOG=1)
            sdnotify.notify(STATUS=self._one_line(problems))
            self._write_status()
            await asyncio.sleep(period)

    def _one_line(self, problems: list[str] | None = None) -> str:
        """systemctl status's one line: what a person checks first."""
        up = "uplink up" if self.uplink.connected else "uplink down"
        head = f"{len(self.pipeline.devices)} devices, {up}, outbox {self.outbox.depth}"
        return f"{head}; UNHEALTHY: {problems[0]}" if problems else head

    async def reload(self) -> None:
        """SIGHUP: read the config file again and apply it as a pushed config is applied; a
        file that does not validate is logged, problem by problem, and the running config kept."""
        if self.config_file is None:
            logger.warning("SIGHUP: no config file to reload")
            return
        sdnotify.notify(RELOADING=1, STATUS=f"reloading {self.config_file}")
        try:
            cfg, devices = load_gateway(self.config_file)
        except ConfigError as exc:
            logger.error("SIGHUP: %s not applied, the running config v%d is kept:\n%s",
                         self.config_file, self.cfg.version, exc)  # fmt: skip
        else:
            await self.remote.apply_file(cfg, devices, self.config_file)
        finally:  # systemd holds the unit in "reloading" until it hears READY=1 again
            sdnotify.notify(READY=1, STATUS=self._one_line())

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
                with contextlib.suppress(TimeoutError):  # (not wait_for: see uplink.py)
                    async with asyncio.timeout(max(due - loop.time(), 0)):
                        await changed.wait()
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
    log_context(gateway=cfg.gateway.id)  # on every record of this process (JSON logs)
    if args.validate_config:
        print(f"{args.config}: ok ({len(devices)} devices on {len(cfg.buses)} buses)")
        return 0
    try:
        agent = EdgeAgent(cfg, devices, Path(os.getcwd()), metrics_port=args.metrics_port,
                          config_file=args.config)  # fmt: skip
    except OutboxBusy as exc:
        print(f"edge: {exc}", file=sys.stderr)
        return 1
    return asyncio.run(_run_until_signal(agent))


async def _run_until_signal(agent: EdgeAgent) -> int:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()

    def stop() -> None:
        sdnotify.notify(STOPPING=1, STATUS="stopping: what was read goes into the outbox")
        task.cancel()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)
    reloads: set[asyncio.Task[None]] = set()

    def reload() -> None:
        job = loop.create_task(agent.reload(), name="reload")
        reloads.add(job)
        job.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, reload)
    logging.getLogger().addHandler(agent.recent_errors)
    logger.info(
        "edge agent %s: %d devices, uplink %s",
        agent.cfg.gateway.id, len(agent.pipeline.devices),
        ", ".join(f"{b.host}:{b.port}" for b in agent.cfg.mqtt.brokers()),
    )  # fmt: skip
    with contextlib.suppress(asyncio.CancelledError):
        await agent.run()
    logger.info("edge agent stopped")
    return 0
