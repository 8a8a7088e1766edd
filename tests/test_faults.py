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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import yaml

from gridwatch.ground.contract import TelemetryBatch
from tests._central_helpers import wait_for_log
from tests.fieldkit import CABINET
from tests.services import Mosquitto, Victoria, free_port
from tests.test_metrics import scrape

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gridwatch.top.cli", *args], stdout=out, stderr=subprocess.STDOUT
        )


@dataclass
class Rig:
    work: Path
    prefix: str
    broker: Mosquitto
    vm: Victoria
    config: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    metrics_port: int = field(default_factory=free_port)  # the edge's, for its outbox depth
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)  # by message id
    watcher_up: asyncio.Event = field(default_factory=asyncio.Event)

    gateway = "gw-futian-01"

    def log(self, name: str) -> Path:
        return self.work / f"{name}.log"

    def start(self, name: str) -> None:
        log = self.log(name)
        start = log.stat().st_size if log.exists() else 0
        if name == "sim":
            # events 5x faster: an alert is raised and cleared while the faults happen
            self.procs[name] = _spawn(["sim", "-c", str(self.config), "--speedup", "5"], log)
            wait_for_log(self.procs[name], log, b"sim: serving", start)
        elif name == "edge":
            self.procs[name] = _spawn(
                ["edge", "run", "-c", str(self.config), "--metrics-port", str(self.metrics_port)],
                log,
            )
            wait_for_log(self.procs[name], log, b"edge agent", start)
        elif name == "bridge":
            self.procs[name] = _spawn(
                ["bridge", "run", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(self.broker.port),
                 "--prefix", self.prefix, "--influx-url", self.vm.url, "--data-dir",
                 str(self.work / "central"), "--bridge-id", f"bridge-{self.prefix}"],
                log,
            )  # fmt: skip
            wait_for_log(self.procs[name], log, b"bridge subscribed", start)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(15)

    def unsent(self) -> int:
        """Readings not yet batched plus messages the broker has not taken, from the running
        edge's metrics (it holds the outbox file locked). Not the messages the centre has not
        acknowledged: the edge polls on (failed reads, once the field stops), so there are
        always a second's worth of those; ``check`` waits for the store."""
        got = scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")
        return int(got[("gridwatch_edge_outbox_unsent", ())]) + int(
            got[("gridwatch_edge_readings_staged", ())]
        )

    def served_reads(self) -> dict[str, int]:
        """Reads of each device's counter the simulator served (logged as it stops)."""
        text = self.log("sim").read_text()
        return {d: int(n) for d, n in re.findall(r"sim: (\S+) counter served (\d+) reads", text)}

    def registry_alerts(self) -> list[tuple[str, str]]:
        with contextlib.closing(sqlite3.connect(self.work / "central" / "registry.db")) as db:
            rows = db.execute("SELECT alert_id, state FROM alert_transitions").fetchall()
        return [(str(a), str(s)) for a, s in rows]

    async def watch(self) -> None:
        """Every telemetry batch published, across broker restarts (persistent session)."""
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.broker.port, identifier=f"watch-{self.prefix}",
                    clean_session=False,
                ) as c:  # fmt: skip
                    await c.subscribe(f"{self.prefix}/gw/+/telemetry", qos=1)
                    self.watcher_up.set()
                    async for msg in c.messages:
                        payload = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                        self.batches[payload["id"]] = payload
            except aiomqtt.MqttError:
                self.watcher_up.clear()
                await asyncio.sleep(0.2)

    async def settle(self, within_s: float = 60) -> None:
        """Stop the field, let the gateway drain its outbox, and the store catch up."""
        self.stop("sim")
        deadline = time.monotonic() + within_s
        while await asyncio.to_thread(self.unsent) > 0:
            assert time.monotonic() < deadline, "the outbox did not drain"
            await asyncio.sleep(0.2)
        self.stop("edge")

    async def check(self, within_s: float = 30, edge_kills: int = 0) -> dict[str, int]:
        batches = [TelemetryBatch.model_validate(b) for b in self.batches.values()]
        seqs = sorted(b.seq for b in batches)
        assert seqs == list(range(1, len(seqs) + 1)), "a telemetry batch went missing"
        polls = self._check_every_poll(batches, edge_kills)
        sent: dict[tuple[str, str, int], float] = {}
        for b in batches:
            for r in b.readings:
                if isinstance(r.value, int | float):
                    key = (r.device, r.point, r.ts)
                    assert key not in sent, f"the gateway published {key} in two batches"
                    sent[key] = float(r.value)
        deadline = time.monotonic() + within_s
        while True:
            stored = await asyncio.to_thread(self._stored)
            missing = set(sent) - set(stored)
            if not missing:
                break
            assert time.monotonic() < deadline, f"{len(missing)} readings never reached the store"
            await asyncio.sleep(0.5)
        doubled = {k: n for k, (_, n) in stored.items() if n > 1}
        assert not doubled, f"{len(doubled)} samples stored more than once"
        # VictoriaMetrics keeps 12 significant digits
        wrong = {
            k: (v, stored[k][0])
            for k, v in sent.items()
            if not math.isclose(stored[k][0], v, rel_tol=1e-11)
        }
        assert not wrong, f"stored values differ: {list(wrong.items())[:5]}"
        transitions = self.registry_alerts()
        assert len(transitions) == len(set(transitions)), "an alert transition was doubled"
        return {"batches": len(seqs), "readings": len(sent), "polls": polls,
                "alert_transitions": len(transitions)}  # fmt: skip

    def _check_every_poll(self, batches: list[TelemetryBatch], edge_kills: int) -> int:
        served = self.served_reads()
        assert served, "the simulator logged no read counters"
        arrived: dict[str, list[int]] = {d: [] for d in served}
        failed = dict.fromkeys(served, 0)
        for b in batches:
            for r in b.readings:
                if r.point == "counter" and r.device in served:
                    if isinstance(r.value, int):
                        arrived[r.device].append(r.value)
                    elif r.quality == "comm_error":
                        failed[r.device] += 1
        for device, n in served.items():
            got = arrived[device]
            assert len(got) == len(set(got)), f"{device}: a poll arrived twice"
            missing = sorted(set(range(1, n + 1)) - set(got))
            # a poll the gateway reported failed may have been answered after it gave up; a
            # SIGKILL may catch one read between the answer and the journal
            assert len(missing) <= failed[device] + edge_kills, (
                f"{device}: {len(missing)} of {n} polls never arrived: {missing[:20]} "
                f"({failed[device]} failed polls, {edge_kills} edge kills)"
            )
        return sum(len(v) for v in arrived.values())

    def _stored(self) -> dict[tuple[str, str, int], tuple[float, int]]:
        out: dict[tuple[str, str, int], tuple[float, int]] = {}
        for s in self.vm.export(f'gridwatch_value{{gateway="{self.gateway}"}}'):
            m = s["metric"]
            for ts, v in zip(s["timestamps"], s["values"], strict=True):
                key = (m["device"], m["point"], ts)
                out[key] = (v, out.get(key, (0.0, 0))[1] + 1)
        return out


@pytest.fixture
def rig_parts(tmp_path: Path, prefix: str) -> Iterator[tuple[Mosquitto, Victoria, Path]]:
    broker = Mosquitto(tmp_path / "mq", persistent=True).start()
    vm = Victoria(tmp_path / "vm").start()
    cfg = yaml.safe_load(CABINET.read_text())
    cfg["mqtt"].update(
        {"port": broker.port, "prefix": prefix, "batch_max": 50, "batch_linger_s": 0.1}
    )
    cfg["outbox"]["path"] = str(tmp_path / "edge" / "outbox.db")
    cfg["health_interval_s"] = 5
    port = free_port()
    for bus in cfg["buses"]:
        bus.update({"port": port, "timeout_s": 0.3})
    for dev in cfg["devices"]:
        dev["interval_s"] = 0.5
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    yield broker, vm, path
    broker.stop()
    vm.stop()


@contextlib.asynccontextmanager
async def running_rig(parts: tuple[Mosquitto, Victoria, Path], prefix: str) -> AsyncIterator[Rig]:
    broker, vm, path = parts
    rig = Rig(path.parent, prefix, broker, vm, path)
    watcher = asyncio.create_task(rig.watch())
    try:
        await asyncio.wait_for(rig.watcher_up.wait(), 10)
        for name in ("bridge", "sim", "edge"):
            await asyncio.to_thread(rig.start, name)
        yield rig
    finally:
        watcher.cancel()
        for name in list(rig.procs):
            rig.stop(name, signal.SIGKILL)


async def flow(rig: Rig, seconds: float) -> None:
    """Let readings flow for a while (the field polls every 0.5 s)."""
    await asyncio.sleep(seconds)


async def test_broker_down_10s_three_times(
    rig_parts: tuple[Mosquitto, Victoria, Path], prefix: str
) -> None:
    async with running_rig(rig_parts, prefix) as rig:
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
    async with running_rig(rig_parts, prefix) as rig:
        for wait in (3.3, 2.7):
            await flow(rig, wait)
            rig.stop("edge", signal.SIGKILL)
            await flow(rig, 1)
            await asyncio.to_thread(rig.start, "edge")
        await flow(rig, 3)
        await rig.settle()
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
        async with running_rig((broker, vm, path), prefix) as rig:
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
    async with running_rig(rig_parts, prefix) as rig:
        await flow(rig, 2)
        rig.vm.stop()
        await asyncio.sleep(10)
        rig.vm.start()
        await flow(rig, 2)
        await rig.settle()
        figures = await rig.check()
    print(figures)
