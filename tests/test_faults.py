"""Fault injection end to end: nothing lost, nothing doubled, every alert once.

Every part runs as its own process, as in production: `gridwatch sim` (the field), `gridwatch edge
run` (the gateway), `gridwatch bridge run` (ingest), with a real mosquitto and VictoriaMetrics that
the tests stop, kill and restart. A watcher with a persistent MQTT session records every telemetry
batch the gateway published. At the end of each scenario:

- every poll the field answered reached the broker: each water-level sensor serves the next
  number of a read counter on every read, and the numbers that arrived are 1..N with no hole and
  no repeat, where N is how many reads the simulator says it served. A hole is allowed only for
  a poll the gateway itself reported failed (it gave up waiting, then the answer came) and, when
  the edge is SIGKILLed, for the one read in flight at the kill;
- the gateway's telemetry sequence numbers have no hole (nothing lost between rules and broker);
- every reading the gateway published is in VictoriaMetrics, and no sample is stored twice
  (VictoriaMetrics runs without its own dedup here, so the bridge's dedupe is what is tested);
- every alert transition reached the registry exactly once.

The rig is in tests/_faults_helpers.py; the crash faults (a broker SIGKILLed or restarted empty,
a centre late, a failover) are in tests/test_faults_crash.py and count in the store instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from tests._faults_helpers import Rig, gateway_yaml, running_rig
from tests.services import Mosquitto, Victoria

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


@pytest.fixture
def rig_parts(tmp_path: Path, prefix: str) -> Iterator[tuple[Mosquitto, Victoria, Path]]:
    broker = Mosquitto(tmp_path / "mq", persistent=True).start()
    vm = Victoria(tmp_path / "vm").start()
    yield broker, vm, gateway_yaml(tmp_path, prefix, [broker])
    broker.stop()
    vm.stop()


@contextlib.asynccontextmanager
async def watched_rig(parts: tuple[Mosquitto, Victoria, Path], prefix: str) -> AsyncIterator[Rig]:
    broker, vm, path = parts
    async with running_rig(Rig(path.parent, prefix, broker, vm, path), watch=True) as rig:
        yield rig


async def flow(rig: Rig, seconds: float) -> None:
    """Let readings flow for a while (the field polls every 0.5 s)."""
    await asyncio.sleep(seconds)


async def test_broker_down_10s_three_times(
    rig_parts: tuple[Mosquitto, Victoria, Path], prefix: str
) -> None:
    async with watched_rig(rig_parts, prefix) as rig:
        for _ in range(3):
            await flow(rig, 2)
            rig.broker.stop()
            await asyncio.sleep(10)
            rig.broker.start()
        await flow(rig, 2)
        await rig.settle()
        figures = await rig.check()
    assert figures["batches"] > 20
    print(figures)


async def test_edge_killed_mid_flow_and_restarted(
    rig_parts: tuple[Mosquitto, Victoria, Path], prefix: str
) -> None:
    path = rig_parts[2]
    cfg = yaml.safe_load(path.read_text())
    # a long linger: at the kill, about four polls per device are not in a batch yet
    cfg["mqtt"]["batch_linger_s"] = 2.0
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    async with watched_rig(rig_parts, prefix) as rig:
        for wait in (3.3, 2.7):
            await flow(rig, wait)
            rig.stop("edge", signal.SIGKILL)
            await flow(rig, 1)
            await asyncio.to_thread(rig.start, "edge")
        await flow(rig, 3)
        await rig.settle(edge_kills=2)
        figures = await rig.check(edge_kills=2)
    assert "recovered" in rig.log("edge").read_text()  # the journal had polls to give back
    print(figures)


async def test_bridge_killed_mid_flow_and_restarted(
    rig_parts: tuple[Mosquitto, Victoria, Path], prefix: str
) -> None:
    broker, _, path = rig_parts
    # the bridge's kill window can write a batch twice; the store's own dedup makes that one
    # sample, as production runs it (see docs/central.md)
    vm = Victoria(path.parent / "vm-dedup", extra_args=["-dedup.minScrapeInterval=1ms"]).start()
    try:
        async with watched_rig((broker, vm, path), prefix) as rig:
            await flow(rig, 3)
            rig.stop("bridge", signal.SIGKILL)
            await flow(rig, 2)
            await asyncio.to_thread(rig.start, "bridge")
            await flow(rig, 2)
            await rig.settle()
            figures = await rig.check()
    finally:
        vm.stop()
    print(figures)


async def test_store_down_10s(rig_parts: tuple[Mosquitto, Victoria, Path], prefix: str) -> None:
    async with watched_rig(rig_parts, prefix) as rig:
        await flow(rig, 2)
        rig.vm.stop()
        await asyncio.sleep(10)
        rig.vm.start()
        await flow(rig, 2)
        await rig.settle()
        figures = await rig.check()
    print(figures)
