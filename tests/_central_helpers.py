"""Helpers for the central platform's tests: message builders and a running bridge."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt

from cloud_bridge import Bridge, BridgeConfig, TelemetrySink
from device_registry import RegistryStore
from gridwatch.ground.contract import (
    AlertEvent,
    AlertState,
    Birth,
    Death,
    Location,
    Quality,
    Reading,
    Severity,
    TelemetryBatch,
    new_id,
)
from tests.services import Victoria

_seq = itertools.count(1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def reading(
    device: str, point: str, value: Any, ts: int, quality: Quality = Quality.GOOD
) -> Reading:
    return Reading(device=device, point=point, value=value, ts=ts, quality=quality, unit="m")


def batch(
    gateway: str, readings: list[Reading], seq: int | None = None, session: int = 1
) -> TelemetryBatch:
    return TelemetryBatch(id=new_id(), gateway=gateway, seq=next(_seq) if seq is None else seq,
                          session=session, readings=readings)  # fmt: skip


def alert(gateway: str, alert_id: str, state: AlertState, ts: int, value: float = 3.2,
          district: str = "north", seq: int = 1) -> AlertEvent:  # fmt: skip
    return AlertEvent(
        id=new_id(), gateway=gateway, seq=seq, session=1, alert_id=alert_id, state=state,
        rule="level_high", category="W-01", severity=Severity.MAJOR, device="d1", point="level",
        location=Location(district=district, street="Main St", grid="G7"), value=value,
        threshold=3.0, unit="m", raised_at=ts, ts=ts,
    )  # fmt: skip


def birth(gateway: str, session: int, devices: list[str]) -> Birth:
    return Birth(gateway=gateway, session=session, ts=now_ms(), devices=devices)


def death(gateway: str, session: int) -> Death:
    return Death(gateway=gateway, session=session)


def bridge_config(host: str, port: int, prefix: str, data_dir: Path, **kw: Any) -> BridgeConfig:
    kw.setdefault("client_id", f"bridge-{prefix}")
    kw.setdefault("registry_window_s", 0.2)  # the production default (1 s) only slows tests
    return BridgeConfig(mqtt_host=host, mqtt_port=port, prefix=prefix, data_dir=data_dir, **kw)


@asynccontextmanager
async def running(bridge: Bridge) -> AsyncIterator[Bridge]:
    """Run ``bridge`` in a task until the block ends; enter once it is subscribed."""
    task = asyncio.create_task(bridge.run(), name="bridge")
    try:
        async with asyncio.timeout(10):
            await bridge.connected.wait()
        yield bridge
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@asynccontextmanager
async def bridge_on(
    cfg: BridgeConfig, store: RegistryStore, sink: TelemetrySink
) -> AsyncIterator[Bridge]:
    async with running(Bridge(cfg, store, sink)) as b:
        yield b


async def until(bridge: Bridge, predicate: Any, live: bool = False) -> None:
    async with asyncio.timeout(10):
        await bridge.until(predicate, live=live)


@asynccontextmanager
async def publisher(host: str, port: int, v5: bool = True) -> AsyncIterator[aiomqtt.Client]:
    proto = aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311
    async with aiomqtt.Client(host, port, protocol=proto) as client:
        yield client


def start_vm_with_dedup(workdir: Path) -> Victoria:
    """A VictoriaMetrics that keeps one sample per series and millisecond, as production should
    run it: a batch redelivered after a bridge crash is then written twice but stored once."""
    return Victoria(workdir, extra_args=["-dedup.minScrapeInterval=1ms"]).start()


def bridge_process(args: list[str], log: Path, within_s: float = 60) -> subprocess.Popen[bytes]:
    """``gridwatch bridge run`` as its own process; returns once it has subscribed. A process
    that does not get there is killed before the error is raised: the caller never had it."""
    start = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridwatch.top.cli", "bridge", "run", *args],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_log(proc, log, b"bridge subscribed", start, within_s)
    except BaseException:
        end_all([proc])
        raise
    return proc


def end_all(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGKILL every process of ``procs`` still running and reap it, each whatever happens to
    the others (a test that failed must leave none behind)."""
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGCONT)  # a paused one takes SIGKILL all the same
                proc.kill()
    for proc in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)


def wait_for_log(
    proc: subprocess.Popen[bytes], log: Path, needle: bytes, start: int = 0, within_s: float = 60
) -> None:
    """Another process's readiness is in its log (after byte ``start``): poll it, with a deadline."""
    deadline = time.monotonic() + within_s
    while needle not in log.read_bytes()[start:]:
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{needle!r} not in {log}:\n{log.read_text()}")
        time.sleep(0.02)


def count_rows(db: Path, table: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
