"""Bridge ingest throughput: telemetry over MQTT into VictoriaMetrics, with the registry updated.

Starts its own mosquitto and VictoriaMetrics, runs N bridge processes (``gridwatch bridge run``;
with N > 1 on an MQTT 5 shared subscription), publishes M telemetry batches of 500 readings from
1,000 devices x 10 points, and times until the registry has recorded every batch id (the bridge
records ids in the same step it writes, after the time-series write returned). Meanwhile it raises
alerts every 10 ms and times each to the platform alert topic.
Target: >= 100,000 points/s for one process; about twice that for two.

    .venv/bin/python -m bench.bridge_bench [--bridges 1] [--batches 400] [--registry sqlite|postgres]
                                           [--cpu-per-bridge 0.4]

Scaling out needs spare cores: one bridge already keeps a core busy, and VictoriaMetrics,
mosquitto and the publisher need theirs, so on a 2-core machine two uncapped bridges cannot
double anything. ``--cpu-per-bridge F`` holds each bridge process to F of a core (a CPU cgroup,
v1 or v2; needs root), which leaves the machine headroom, so 1 and 2 bridges compare like for
like, as they would on a machine with a core per bridge. The bench also prints the CPU of every
other process and how busy the machine was.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import asyncpg
import paho.mqtt.client as paho

from gridwatch.ground.contract import (
    AlertEvent,
    AlertState,
    Location,
    Reading,
    Severity,
    TelemetryBatch,
    Topics,
    new_id,
)
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


def publish(port: int, messages: list[tuple[str, bytes]], rate: float = 0) -> float:
    """Publish at QoS 1 with paho (threaded loop), at ``rate`` points/s (0: as fast as it can);
    returns when all are PUBACKed."""
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    pending = threading.Semaphore(0)
    client.on_publish = lambda *_: pending.release()
    client.connect("127.0.0.1", port)
    client.loop_start()
    t = time.perf_counter()
    for i, (topic, payload) in enumerate(messages):
        if rate:  # pace: batch i is due at i * 500 / rate seconds
            delay = t + i * PER_BATCH / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        client.publish(topic, payload, qos=1)
    for _ in messages:
        pending.acquire()
    elapsed = time.perf_counter() - t
    client.loop_stop()
    client.disconnect()
    return elapsed


class AlertProbe:
    """Raises alerts while the telemetry flood is ingested and times each one from the gateway's
    publish to the city platform's subscriber (the event's ``message`` carries the send time)."""

    def __init__(self, port: int, count: int, interval_s: float) -> None:
        self.port, self.count, self.interval_s = port, count, interval_s
        self.latencies_ms: list[float] = []
        self.done = threading.Event()
        self.topics = Topics("bench")
        self.sub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self.sub.on_message = self._received

    def _received(self, _c: object, _u: object, msg: paho.MQTTMessage) -> None:
        sent = int(json.loads(msg.payload)["message"])
        self.latencies_ms.append((time.time_ns() - sent) / 1e6)
        if len(self.latencies_ms) == self.count:
            self.done.set()

    def start(self) -> None:
        self.sub.connect("127.0.0.1", self.port)
        self.sub.subscribe(self.topics.platform_alerts(), qos=1)
        self.sub.loop_start()
        threading.Thread(target=self._raise_alerts, daemon=True).start()

    def _raise_alerts(self) -> None:
        pub = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        pub.connect("127.0.0.1", self.port)
        pub.loop_start()
        for i in range(self.count):
            now = time.time_ns()
            ev = AlertEvent(
                id=new_id(), gateway="gw00", seq=i + 1, session=1, alert_id=f"probe-{i}",
                state=AlertState.RAISED, rule="level_high", category="W-01",
                severity=Severity.MAJOR, device="dev0000", point="p0",
                location=Location(district="bench"), value=9.9, raised_at=now // 1_000_000,
                ts=now // 1_000_000, message=str(now),
            )  # fmt: skip
            pub.publish(self.topics.alert("gw00"), ev.model_dump_json(), qos=1)
            time.sleep(self.interval_s)
        pub.loop_stop()
        pub.disconnect()

    def report(self) -> str:
        if not self.done.wait(30):
            return f"alerts: only {len(self.latencies_ms)}/{self.count} reached the platform"
        lat = sorted(self.latencies_ms)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        self.sub.loop_stop()
        return (
            f"alert -> platform latency meanwhile ({self.count} alerts): "
            f"p50 {statistics.median(lat):.1f} ms, p99 {p99:.1f} ms, max {lat[-1]:.1f} ms"
        )


class CpuCap:
    """A CPU cgroup holding each process put in it to ``fraction`` of one core."""

    def __init__(self, fraction: float) -> None:
        self.fraction = fraction
        self.groups: list[Path] = []

    def apply(self, pid: int) -> None:
        period = 100_000
        quota = int(self.fraction * period)
        v2 = Path("/sys/fs/cgroup/cgroup.controllers")
        try:
            if v2.exists():
                group = Path(f"/sys/fs/cgroup/gw-bench-{pid}")
                group.mkdir()
                (group / "cpu.max").write_text(f"{quota} {period}")
            else:
                group = Path(f"/sys/fs/cgroup/cpu/gw-bench-{pid}")
                group.mkdir()
                (group / "cpu.cfs_period_us").write_text(str(period))
                (group / "cpu.cfs_quota_us").write_text(str(quota))
            self.groups.append(group)
            (group / "cgroup.procs").write_text(str(pid))
        except OSError as exc:
            raise SystemExit(f"--cpu-per-bridge needs a writable CPU cgroup (root): {exc}") from exc

    def remove(self) -> None:
        for group in self.groups:
            with contextlib.suppress(OSError):
                group.rmdir()


def start_bridges(
    n: int, mq: Mosquitto, vm: Victoria, work: Path, db_url: str, cap: CpuCap | None = None
) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(n):
        prof = (
            ["-m", "cProfile", "-o", os.environ["BENCH_PROFILE"]]
            if os.environ.get("BENCH_PROFILE")
            else []
        )
        cmd = [sys.executable, *prof, "-m", "gridwatch.top.cli", "bridge", "run", "--mqtt-host", "127.0.0.1",
               "--mqtt-port", str(mq.port), "--influx-url", vm.url, "--prefix", "bench",
               "--data-dir", str(work / "central"), "--db-url", db_url, "--bridge-id", f"bench-{i}",
               "--mqtt-protocol", "5"]  # fmt: skip
        if n > 1:
            cmd += ["--share-group", "bench"]
        log = open(work / f"bridge{i}.log", "wb")  # noqa: SIM115 - lives as long as the process
        procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        if cap is not None:
            cap.apply(procs[-1].pid)
        # one after the other: the first creates (migrates) the registry's tables, and two
        # processes doing that at once on PostgreSQL collide
        deadline = time.monotonic() + 30
        while b"bridge subscribed" not in (work / f"bridge{i}.log").read_bytes():
            if time.monotonic() > deadline or procs[i].poll() is not None:
                raise RuntimeError((work / f"bridge{i}.log").read_text())
            time.sleep(0.05)
    return procs


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    hz = os.sysconf("SC_CLK_TCK")
    return (sum(ticks) - idle) / hz, sum(ticks) / hz


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
    cap = CpuCap(args.cpu_per_bridge) if args.cpu_per_bridge else None
    try:
        procs = start_bridges(args.bridges, mq, vm, work, db_url, cap)
        messages = payloads(args.batches, int(time.time() * 1000) - 3_600_000)
        points = len(messages) * PER_BATCH
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        assert mq.proc is not None and vm.proc is not None
        others = {"mosquitto": mq.proc.pid, "VictoriaMetrics": vm.proc.pid,
                  "publisher (this process)": os.getpid()}  # fmt: skip
        others0 = {k: cpu_seconds(pid) for k, pid in others.items()}
        busy0 = machine_busy_s()
        # spread the alerts over the run: every 10 ms in a flood, over the paced duration otherwise
        interval = 0.01 if not args.rate else points / args.rate / max(args.alerts, 1)
        probe = AlertProbe(mq.port, args.alerts, interval)
        t0 = time.perf_counter()
        probe.start()
        pub_s = await asyncio.to_thread(publish, mq.port, messages, args.rate)
        while (done := await count_seen(db_url)) < len(messages) + args.alerts:
            if time.perf_counter() - t0 > 300:
                raise TimeoutError(f"only {done}/{len(messages)} batches ingested")
            await asyncio.sleep(0.05)
        elapsed = time.perf_counter() - t0
        cpu = [cpu_seconds(p.pid) - c for p, c in zip(procs, cpu0, strict=True)]
        other_cpu = {k: cpu_seconds(pid) - others0[k] for k, pid in others.items()}
        busy1 = machine_busy_s()
        busy, total = busy1[0] - busy0[0], busy1[1] - busy0[1]
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}")  # fmt: skip
        print(f"bridges: {args.bridges} process(es){' on a shared subscription' if args.bridges > 1 else ''}, "
              f"registry on {args.registry}, sink VictoriaMetrics (InfluxDB line protocol)"
              + (f", each held to {args.cpu_per_bridge:g} of a core" if cap else ""))  # fmt: skip
        print(f"published {len(messages)} batches x {PER_BATCH} = {points} points in {pub_s:.2f}s")
        print(f"ingested all {points} points in {elapsed:.2f}s: {points / elapsed:,.0f} points/s"
              + (f" (offered {args.rate:,.0f}/s)" if args.rate else ""))  # fmt: skip
        print(f"bridge CPU seconds: {', '.join(f'{c:.2f}' for c in cpu)} "
              f"({points / sum(cpu):,.0f} points per CPU second)")  # fmt: skip
        print(
            "meanwhile:          " + ", ".join(f"{k} {c:.2f} CPU s" for k, c in other_cpu.items())
        )
        print(f"machine busy:       {busy / total:.0%} of {os.cpu_count()} CPUs over the run "
              f"({busy:.1f} of {total:.1f} CPU s)")  # fmt: skip
        print(probe.report())
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        if cap is not None:
            cap.remove()
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
    parser.add_argument("--alerts", type=int, default=100, help="alerts raised during the flood")
    parser.add_argument("--rate", type=float, default=0, help="telemetry points/s (0: a flood)")
    parser.add_argument("--cpu-per-bridge", type=float, default=0,
                        help="hold each bridge to this fraction of a core (cgroup; root)")  # fmt: skip
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gw-bridge-bench-") as work:
        asyncio.run(run(args, Path(work)))


if __name__ == "__main__":
    main()
