"""The whole edge: 500 simulated Modbus TCP devices -> EdgeAgent -> a real mosquitto.

    .venv/bin/python bench/edge_bench.py [--devices 500] [--procs 4] [--interval 0.5]
                                         [--points 20] [--duration 20] [--profile out.prof]

The edge agent runs as ``gridwatch edge run`` in its own process (drivers -> pipeline rules ->
SQLite outbox -> MQTT uplink, QoS 1), the simulators as ``gridwatch sim`` processes (one
endpoint each), and the broker is a mosquitto of the bench's own. A subscriber in this process
counts the readings that reached the broker. Printed: readings/s published, CPU seconds of the
edge process per 1,000 readings and readings per CPU-second (target >= 45,000), its peak RSS
(target < 100 MB), and the polls it skipped because a bus could not keep up.

``--profile FILE`` runs the agent under cProfile (slower; for finding the hot path).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiomqtt

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.edge_poll_bench import Field, add_field_args, simulated_field  # noqa: E402
from gridwatch.ground.contract import encode_acks  # noqa: E402
from tests.services import Mosquitto  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
PREFIX = "bench"
SEQ = re.compile(rb'"seq":(\d+)')


def gateway_yaml(field: Field, args: argparse.Namespace, mqtt: int) -> str:
    return (
        "gateway: {id: gw-bench}\nprofiles_dir: profiles\nhealth_interval_s: 2\n"
        f"mqtt: {{host: 127.0.0.1, port: {mqtt}, prefix: {PREFIX}, batch_max: {args.batch}}}\n"
        f"outbox: {{path: {field.root / 'outbox.db'}}}\n" + field.yaml()
    )


def cpu_s(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of a process (``/proc/PID/stat`` fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def written(pid: int) -> int:
    """Bytes the process handed to write calls (``/proc/PID/io`` wchar): outbox WAL and
    checkpoints, since the agent writes no other file."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Counter:
    """Readings and health reports that reached the broker; acknowledged as the centre would
    (``mqtt.ack: centre``): one Ack a fifth of a second naming what arrived."""

    def __init__(self) -> None:
        self.readings = 0
        self.batches = 0
        self.skipped = 0  # polls_skipped summed over devices, from the latest health report
        self.health_reports = 0
        self.arrived: list[tuple[str, str, int]] = []

    async def run(self, port: int, ready: asyncio.Event) -> None:
        async with aiomqtt.Client("127.0.0.1", port, max_queued_incoming_messages=0) as client:
            for leaf in ("telemetry", "health", "alert"):
                await client.subscribe(f"{PREFIX}/gw/+/{leaf}", qos=1)
            ready.set()
            acking = asyncio.create_task(self.acknowledge(client))
            try:
                await self.count(client)
            finally:
                acking.cancel()

    async def count(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            payload = msg.payload
            assert isinstance(payload, bytes)
            _, _, gw, leaf = msg.topic.value.split("/", 3)
            seq = SEQ.search(payload)  # no JSON parse on the hot path of the count
            if seq:
                self.arrived.append((gw, leaf, int(seq.group(1))))
            if leaf == "telemetry":
                self.readings += payload.count(b'"quality"')
                self.batches += 1
            elif leaf == "health":
                self.on_health(payload)

    async def acknowledge(self, client: aiomqtt.Client) -> None:
        while True:
            await asyncio.sleep(0.2)  # the bridge's commit window, not a wait for an event
            arrived, self.arrived = self.arrived, []
            for gw, ack in encode_acks(arrived, int(time.time() * 1000)).items():
                await client.publish(f"{PREFIX}/gw/{gw}/ack", ack.model_dump_json(), qos=1)

    def on_health(self, payload: bytes) -> None:
        doc: dict[str, Any] = json.loads(payload)
        self.skipped = sum(d.get("polls_skipped", 0) for d in doc.get("devices", []))
        self.health_reports += 1


async def measure(edge: subprocess.Popen[str], mqtt_port: int, args: argparse.Namespace) -> None:
    counter = Counter()
    ready = asyncio.Event()
    task = asyncio.create_task(counter.run(mqtt_port, ready))
    await ready.wait()
    await asyncio.sleep(args.warmup)  # a benchmark's measuring window, not a wait for an event
    n0, skip0, cpu0, t0 = counter.readings, counter.skipped, cpu_s(edge.pid), time.monotonic()
    w0 = written(edge.pid)
    await asyncio.sleep(args.duration)
    n, cpu1, wall = counter.readings - n0, cpu_s(edge.pid), time.monotonic() - t0
    wrote = written(edge.pid) - w0
    user, system = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    cpu = user + system
    rss = peak_rss_mb(edge.pid)
    skipped = counter.skipped - skip0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    demand = args.devices * args.points / args.interval
    print(f"field              {args.devices} devices x {args.points} points every "
          f"{args.interval:g} s = {demand:,.0f} readings/s offered, {args.procs} sim processes")  # fmt: skip
    print(f"published          {n / wall:,.0f} readings/s reached the broker "
          f"({n:,} in {wall:.1f} s, {counter.batches:,} batches in all)")  # fmt: skip
    print(f"edge CPU           {cpu / max(n, 1) * 1000:.4f} s per 1,000 readings, "
          f"{n / max(cpu, 1e-9):,.0f} readings per CPU-second (target >= 45,000); "
          f"{cpu / wall:.0%} of a core (user {user:.1f} s, system {system:.1f} s)")  # fmt: skip
    print(f"edge peak RSS      {rss:.1f} MB (target < 100 MB)")
    polls = args.devices / args.interval * wall
    print(f"edge writes        {wrote / wall / 2**20:.1f} MB/s to the outbox, "
          f"{wrote / polls / 1024:.1f} KiB per poll (each poll is journalled before the rules see it)")  # fmt: skip
    print(f"skipped polls      {skipped} in the window (health reports seen: "
          f"{counter.health_reports})")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_field_args(ap)
    ap.add_argument("--batch", type=int, default=500, help="readings per telemetry message")
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=5.0)
    ap.add_argument("--profile", default=None, help="run the agent under cProfile into FILE")
    args = ap.parse_args()
    with simulated_field(ap, args) as field:
        root = field.root
        broker = Mosquitto(root / "mosquitto").start()
        (root / "gw.yaml").write_text(gateway_yaml(field, args, broker.port))
        prof = ["-m", "cProfile", "-o", args.profile] if args.profile else []
        edge = subprocess.Popen([sys.executable, *prof, "-m", "gridwatch.top.cli", "edge", "run",
                                 "-c", str(root / "gw.yaml")], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                text=True)  # fmt: skip
        try:
            asyncio.run(measure(edge, broker.port, args))
        finally:
            edge.send_signal(signal.SIGTERM)  # a clean stop, which also writes the profile
            try:
                edge.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print("edge agent did not stop within 30 s of SIGTERM: killed", file=sys.stderr)
                edge.kill()
                edge.wait()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
