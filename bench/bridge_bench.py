"""Bridge ingest throughput: telemetry over MQTT into VictoriaMetrics, with the registry updated.

Starts its own mosquitto and VictoriaMetrics, runs N bridge processes (``gridwatch bridge run``;
with N > 1 on an MQTT 5 shared subscription), publishes M telemetry batches of 500 readings from
1,000 devices x 10 points, and times until the registry has recorded every batch id (the bridge
records ids in the same step it writes, after the time-series write returned).
Target: >= 100,000 points/s for one process; about twice that for two.

    .venv/bin/python -m bench.bridge_bench [--bridges 1] [--batches 400] [--registry sqlite|postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
import paho.mqtt.client as paho

from gridwatch.contract import Reading, TelemetryBatch, Topics, new_id
from tests.services import Mosquitto, Postgres, Victoria

PER_BATCH = 500
DEVICES = 1000
POINTS = 10
GATEWAYS = 20


def payloads(batches: int, t0: int) -> list[tuple[str, bytes]]:
    """Each gateway owns 50 devices; a batch is one poll round of 50 devices x 10 points."""
    topics = Topics("bench")
    per_gw = DEVICES // GATEWAYS
    out: list[tuple[str, bytes]] = []
    for i in range(batches):
        gw_n, rnd = i % GATEWAYS, i // GATEWAYS
        gw = f"gw{gw_n:02d}"
        readings = [
            Reading(device=f"dev{gw_n * per_gw + d:04d}", point=f"p{p}", value=float(rnd + d + p),
                    unit="m", ts=t0 + rnd * 1000)
            for d in range(per_gw) for p in range(POINTS)
        ]  # fmt: skip
        msg = TelemetryBatch(id=new_id(), gateway=gw, seq=rnd + 1, session=1, readings=readings)
        out.append((topics.telemetry(gw), msg.model_dump_json().encode()))
    return out


def publish(port: int, messages: list[tuple[str, bytes]]) -> float:
    """Publish at QoS 1 with paho (threaded loop); returns when all are PUBACKed."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    pending = threading.Semaphore(0)
    client.on_publish = lambda *_: pending.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    t = time.perf_counter()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1)
    for _ in messages:
        pending.acquire()
    elapsed = time.perf_counter() - t
    client.loop_stop()
    client.disconnect()
    return elapsed


def start_bridges(
    n: int, mq: Mosquitto, vm: Victoria, work: Path, db_url: str
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        prof = ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]] if os.environ.get("BENCH_PROFILE") else []
        cmd = [sys.executable, *prof, "-m", "gridwatch.cli", "bridge", "run", "--mqtt-host", "127.0.0.1",
               "--mqtt-port", str(mq.port), "--influx-url", vm.url, "--prefix", "bench",
               "--data-dir", str(work / "central"), "--db-url", db_url, "--bridge-id", f"bench-{i}",
               "--mqtt-protocol", "5"]  # fmt: skip
        if n > 1:
            cmd += ["--share-group", "bench"]
        log = open(work / f"bridge{i}.log", "wb")  # noqa: SIM115 - lives as long as the process
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
    for i in range(n):  # wait for each to log its subscription
        deadline = time.monotonic() + 30
        while b"bridge subscribed" not in (work / f"bridge{i}.log").read_bytes():
            if time.monotonic() > deadline or procs[i].poll() is not None:
                raise RuntimeError((work / f"bridge{i}.log").read_text())
            time.sleep(0.05)
    return procs


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def count_seen(db_url: str) -> int:
    if db_url.startswith("sqlite"):
        path = db_url.split(":///", 1)[1]
        with sqlite3.connect(path) as conn:
            return int(conn.execute("SELECT count(*) FROM seen_messages").fetchone()[0])
    conn = await asyncpg.connect(db_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        return int(await conn.fetchval("SELECT count(*) FROM seen_messages"))
    finally:
        await conn.close()


async def run(args: argparse.Namespace, work: Path) -> None:
    mq = Mosquitto(work / "mq").start()
    vm = Victoria(work / "vm").start()
    pg = (
        Postgres(Path(tempfile.mkdtemp(prefix="gw-bench-pg-"))).start()
        if args.registry == "postgres"
        else None
    )
    db_url = pg.create_database("bench") if pg else f"sqlite+aiosqlite:///{work}/registry.db"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs = start_bridges(args.bridges, mq, vm, work, db_url)
        messages = payloads(args.batches, int(time.time() * 1000) - 3_600_000)
        points = len(messages) * PER_BATCH
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        t0 = time.perf_counter()
        pub_s = await asyncio.to_thread(publish, mq.port, messages)
        while (done := await count_seen(db_url)) < len(messages):
            if time.perf_counter() - t0 > 300:
                raise TimeoutError(f"only {done}/{len(messages)} batches ingested")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - t0
        cpu = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}")  # fmt: skip
        print(f"bridges: {args.bridges} process(es){' on a shared subscription' if args.bridges > 1 else ''}, "
              f"registry on {args.registry}, sink VictoriaMetrics (InfluxDB line protocol)")  # fmt: skip
        print(f"published {len(messages)} batches x {PER_BATCH} = {points} points in {pub_s:.2f}s")
        print(f"ingested all {points} points in {elapsed:.2f}s: {points / elapsed:,.0f} points/s")
        print(f"bridge CPU seconds: {', '.join(f'{c:.2f}' for c in cpu)} "
              f"({points / sum(cpu):,.0f} points per CPU second)")  # fmt: skip
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        vm.stop()
        mq.stop()
        if pg:
            pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bridges", type=int, default=1)
    parser.add_argument("--batches", type=int, default=400)
    parser.add_argument("--registry", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gw-bridge-bench-") as work:
        asyncio.run(run(args, Path(work)))


if __name__ == "__main__":
    main()
