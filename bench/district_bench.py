"""A district through the whole centre: ``gridwatch sim district`` against mosquitto, one or two
bridges (a shared subscription), VictoriaMetrics, PostgreSQL and a registry process.

Every part is its own process, as in production; the bench starts them all on free loopback
ports, runs the simulator (one or two processes, ``--shard``) for ``--duration`` seconds and
samples, every ``--sample`` seconds:

- ingest: points/s written to VictoriaMetrics (its ``vm_rows_inserted_total``);
- backlog: mosquitto's stored messages (``$SYS/broker/store/messages/count``: what it holds for
  slow subscribers) and each bridge's ``gridwatch_bridge_ingest_lag_seconds`` (how long the
  oldest message received and not yet committed has waited);
- the resident memory (RSS) and CPU of every central process and of the simulator.

Then: alert latency from the simulator's publish (its ``--events`` file) to the city platform's
topic, p50/p99; Death -> stale, from the simulator cutting a gateway's socket (the broker then
sends the will) to the registry API showing none of its devices online; the simulator's own
summary (what it sent, what the centre acknowledged).

A short run, for a shared machine (a minute or so)::

    .venv/bin/python -m bench.district_bench --gateways 100 --devices 100 --duration 75

The district at full size (for a quiet machine; ten minutes)::

    .venv/bin/python -m bench.district_bench --gateways 1000 --devices 100 --duration 600 \\
        --bridges 2 --sim-processes 2 --deaths 20
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt

from bench.bridge_bench import cpu_seconds, machine_busy_s
from gridwatch.top.sim.districtrun import percentile
from tests.services import Mosquitto, Postgres, Victoria, free_port
from tests.test_metrics import scrape

PREFIX = "bench"
TOKEN = "district-bench-admin"
STARTUP_S = 120.0


def spawn(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """``gridwatch ARGS``; ``--profile FILE ARGS``: under cProfile, written to FILE at its stop."""
    prof = ["-m", "cProfile", "-o", args[1]] if args[0] == "--profile" else []
    args = args[2:] if prof else args
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, *prof, "-m", "gridwatch.top.cli", *args],
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})  # fmt: skip


def wait_log(proc: subprocess.Popen[bytes], log: Path, needle: bytes) -> None:
    deadline = time.monotonic() + STARTUP_S
    while needle not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{log.name}: no {needle!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.1)


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
    return total / 1024


def postgres_pids(pg: Postgres) -> list[int]:
    """The postmaster and its children (the backends, the writer, the WAL writer...)."""
    master = int((pg.data / "postmaster.pid").read_text().split()[0])
    kids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[1]) == master:
                    kids.append(int(d.name))
    return [master, *kids]


def cpu_of(pids: dict[str, list[int]]) -> dict[str, float]:
    """CPU seconds of each named group of processes (those still running)."""
    out = {}
    for name, group in pids.items():
        total = 0.0
        for pid in group:
            with contextlib.suppress(OSError):
                total += cpu_seconds(pid)
        out[name] = total
    return out


@dataclass
class Sample:
    t: float
    points_per_s: float
    broker_stored: float | None
    lag_s: list[float]
    rss: dict[str, float]


@dataclass
class Watch:
    """What the bench hears on the broker: $SYS figures and the platform's alerts."""

    sys: dict[str, float] = field(default_factory=dict)
    platform: dict[tuple[str, str], int] = field(default_factory=dict)
    """(alert_id, state) -> when it first reached the platform topic (epoch ms)."""

    async def run(self, port: int) -> None:
        async with aiomqtt.Client("127.0.0.1", port, identifier="district-bench-watch") as c:
            await c.subscribe([("$SYS/broker/store/messages/count", 0),
                               ("$SYS/broker/clients/connected", 0),
                               (f"{PREFIX}/platform/alert/#", 1)])  # fmt: skip
            async for msg in c.messages:
                now = time.time_ns() // 1_000_000
                body = bytes(msg.payload) if isinstance(msg.payload, bytes) else b""
                topic = str(msg.topic)
                if topic.startswith("$SYS"):
                    with contextlib.suppress(ValueError):
                        self.sys[topic.split("/", 2)[2]] = float(body)
                else:
                    doc = json.loads(body)
                    self.platform.setdefault((doc["alert_id"], doc["state"]), now)


class Centre:
    """mosquitto, VictoriaMetrics, PostgreSQL, a registry and the bridges, as processes."""

    def __init__(self, work: Path, bridges: int, profile: Path | None = None) -> None:
        self.work, self.n_bridges, self.profile = work, bridges, profile
        self.mq = Mosquitto(work / "mq", extra=["sys_interval 1", "max_connections -1"])
        self.vm = Victoria(work / "vm")
        self.pg = Postgres(Path(tempfile.mkdtemp(prefix="gw-district-pg-")))
        self.http = free_port()
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.metrics_ports: list[int] = []

    def start(self) -> None:
        self.mq.start()
        self.vm.start()
        self.pg.start()
        db = self.pg.create_database("district")
        common = ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(self.mq.port), "--prefix", PREFIX,
                  "--db-url", db, "--data-dir", str(self.work / "central")]  # fmt: skip
        log = self.work / "registry.log"
        self.procs["registry"] = spawn(["registry", "serve", *common, "--http-port",
                                        str(self.http), "--bridge-id", "district-registry"],
                                       log, {"GRIDWATCH_ADMIN_TOKEN": TOKEN})  # fmt: skip
        self._wait_http()
        for i in range(self.n_bridges):
            port = free_port()
            self.metrics_ports.append(port)
            args = ["bridge", "run", *common, "--influx-url", self.vm.url, "--bridge-id",
                    f"district-bridge-{i}", "--mqtt-protocol", "5", "--metrics-port", str(port)]  # fmt: skip
            if self.n_bridges > 1:
                args += ["--share-group", "district"]
            log = self.work / f"bridge{i}.log"
            if self.profile is not None and i == 0:  # where its time goes, written as it stops
                args = ["--profile", str(self.profile), *args]
            self.procs[f"bridge{i}"] = spawn(args, log)
            wait_log(self.procs[f"bridge{i}"], log, b"bridge subscribed")

    def _wait_http(self) -> None:
        deadline = time.monotonic() + STARTUP_S
        while True:
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{self.http}/health", timeout=2),
            ):
                return
            if self.procs["registry"].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.work / "registry.log").read_text()[-3000:])
            time.sleep(0.2)

    def pids(self) -> dict[str, list[int]]:
        out = {name: [p.pid] for name, p in self.procs.items()}
        assert self.mq.proc is not None and self.vm.proc is not None
        out["mosquitto"] = [self.mq.proc.pid]
        out["victoria-metrics"] = [self.vm.proc.pid]
        out["postgres"] = postgres_pids(self.pg)
        return out

    def api(self, path: str) -> Any:
        req = urllib.request.Request(f"http://127.0.0.1:{self.http}{path}",
                                     headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def vm_rows(self) -> float:
        got = scrape(f"{self.vm.url}/metrics")
        return sum(v for (name, labels), v in got.items()
                   if name == "vm_rows_inserted_total" and ("type", "influx") in labels)  # fmt: skip

    def bridge_lags(self) -> list[float]:
        lags = []
        for port in self.metrics_ports:
            try:
                lags.append(scrape(f"http://127.0.0.1:{port}/metrics")[
                    ("gridwatch_bridge_ingest_lag_seconds", ())])  # fmt: skip
            except (OSError, KeyError):
                lags.append(float("nan"))
        return lags

    def stop(self) -> None:
        for p in self.procs.values():
            p.terminate()
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        self.mq.stop()
        self.vm.stop()
        with contextlib.suppress(RuntimeError):
            self.pg.stop()
        shutil.rmtree(self.pg.workdir, ignore_errors=True)


def sim_args(args: argparse.Namespace, centre: Centre, shard: int, events: Path) -> list[str]:
    return ["sim", "district", "--mqtt-port", str(centre.mq.port), "--prefix", PREFIX,
            "--seed", str(args.seed), "--gateways", str(args.gateways), "--devices",
            str(args.devices), "--interval", str(args.interval), "--duration",
            str(args.duration), "--deaths", str(args.deaths), "--down", "20",
            "--storm-at", "15", "--storm-step", str(args.storm_step), "--report", "10",
            "--shard", f"{shard}/{args.sim_processes}", "--events", str(events)]  # fmt: skip


async def stale_times(centre: Centre, events: list[Path], until: float) -> dict[str, float]:
    """Seconds from each scripted cut to the registry showing none of its devices online."""
    cuts: dict[str, int] = {}
    done: dict[str, float] = {}
    while time.monotonic() < until:
        for path in events:
            with contextlib.suppress(OSError):
                for line in path.read_text().splitlines():
                    ev = json.loads(line)
                    if ev["event"] == "cut":
                        cuts.setdefault(ev["gateway"], ev["ms"])
        for gw, at in cuts.items():
            if gw in done:
                continue
            online = await asyncio.to_thread(
                centre.api, f"/api/v1/devices?gateway={gw}&status=online&limit=1"
            )
            if not online:
                done[gw] = (time.time_ns() // 1_000_000 - at) / 1000
        await asyncio.sleep(0.2)
    return done


async def run(args: argparse.Namespace, work: Path) -> None:
    centre = Centre(work, args.bridges, args.profile_bridge)
    centre.start()
    watch = Watch()
    watcher = asyncio.create_task(watch.run(centre.mq.port))
    events = [work / f"events{k}.jsonl" for k in range(args.sim_processes)]
    sims = [spawn(sim_args(args, centre, k, events[k]), work / f"sim{k}.log")
            for k in range(args.sim_processes)]  # fmt: skip
    pids = centre.pids()
    pids.update({f"sim{k}": [p.pid] for k, p in enumerate(sims)})
    cpu0 = cpu_of(pids)
    reaped0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0 = machine_busy_s()
    t0 = time.monotonic()
    stale = asyncio.create_task(stale_times(centre, events, t0 + args.duration + 15))
    samples: list[Sample] = []
    rows0 = await asyncio.to_thread(centre.vm_rows)
    last_rows, last_t = rows0, t0
    print(f"{'t s':>5} {'points/s':>9} {'broker queue':>12} {'bridge lag s':>13}  RSS MB "
          + " ".join(sorted(pids)))  # fmt: skip
    while any(p.poll() is None for p in sims) and time.monotonic() - t0 < args.duration + 60:
        await asyncio.sleep(args.sample)
        now = time.monotonic()
        rows = await asyncio.to_thread(centre.vm_rows)
        pids["postgres"] = postgres_pids(centre.pg)
        s = Sample(now - t0, (rows - last_rows) / (now - last_t),
                   watch.sys.get("store/messages/count"), await asyncio.to_thread(centre.bridge_lags),
                   {n: rss_mb(ps) for n, ps in pids.items()})  # fmt: skip
        samples.append(s)
        last_rows, last_t = rows, now
        print(f"{s.t:5.0f} {s.points_per_s:9.0f} {s.broker_stored or 0:12.0f} "
              f"{' '.join(f'{x:.1f}' for x in s.lag_s):>13}  "
              + " ".join(f"{s.rss[n]:.0f}" for n in sorted(pids)), flush=True)  # fmt: skip
    elapsed = time.monotonic() - t0
    cpu = {n: c - cpu0.get(n, 0) for n, c in cpu_of(pids).items()}
    for p in sims:  # ended: their CPU is what the bench reaped
        p.wait(30)
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu["sims"] = (reaped.ru_utime + reaped.ru_stime) - (reaped0.ru_utime + reaped0.ru_stime)
    for k in range(len(sims)):
        cpu.pop(f"sim{k}", None)
    busy1 = machine_busy_s()
    died = await stale
    summaries = [_summary(work / f"sim{k}.log") for k in range(args.sim_processes)]
    await asyncio.sleep(2)  # the last alerts' way to the platform
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
        await watcher
    latencies = _alert_latencies(events, watch)
    report(args, samples, summaries, latencies, died, cpu, elapsed,
           (busy1[0] - busy0[0]) / max(busy1[1] - busy0[1], 1e-9), rows0, centre)  # fmt: skip
    centre.stop()


def _summary(log: Path) -> dict[str, Any]:
    for line in reversed(log.read_text().splitlines()):
        if line.startswith("sim district summary "):
            return dict(json.loads(line.removeprefix("sim district summary ")))
    return {}


def _alert_latencies(events: list[Path], watch: Watch) -> tuple[list[float], int]:
    """(ms from publish to the platform topic of each alert transition, how many never came)."""
    out, lost = [], 0
    for path in events:
        for line in path.read_text().splitlines():
            ev = json.loads(line)
            if ev["event"] == "alert":
                got = watch.platform.get((ev["alert_id"], ev["state"]))
                if got is None:
                    lost += 1
                else:
                    out.append(float(got - ev["ms"]))
    return out, lost


def report(args: argparse.Namespace, samples: list[Sample], sims: list[dict[str, Any]],
           latencies: tuple[list[float], int], died: dict[str, float], cpu: dict[str, float],
           elapsed: float, busy: float, rows0: float, centre: Centre) -> None:  # fmt: skip
    # after the ramp and before the simulator stops
    steady = [s for s in samples if min(30.0, args.duration / 3) < s.t <= args.duration] or samples
    lat, lost = latencies
    print("\n=== district bench ===")
    print(
        f"machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
        f"busy {busy:.0%} over the run (other engineers' work included)"
    )
    print(
        f"district: {args.gateways} gateways x {args.devices} devices, every {args.interval:g} s; "
        f"{args.sim_processes} simulator process(es); {args.bridges} bridge(s)"
        f"{' on a shared subscription' if args.bridges > 1 else ''}; 1 registry on PostgreSQL"
    )
    sent = sum(s.get("readings", 0) for s in sims)
    print(
        f"simulator sent: {sum(s.get('messages', 0) for s in sims)} messages, {sent} readings "
        f"({sum(s.get('readings_per_s', 0) for s in sims):.0f}/s); centre acked "
        f"{sum(s.get('acked', 0) for s in sims)}, unacked at the end "
        f"{sum(s.get('unacked', 0) for s in sims)}, resent {sum(s.get('resent', 0) for s in sims)}"
    )
    if steady:
        pts = [s.points_per_s for s in steady]
        print(
            f"ingest (VictoriaMetrics rows/s, after the ramp): mean {sum(pts) / len(pts):.0f}, "
            f"min {min(pts):.0f}, max {max(pts):.0f}; stored {centre.vm_rows() - rows0:.0f} "
            f"rows in all"
        )
        stored = [s.broker_stored or 0 for s in steady]
        lags = [x for s in steady for x in s.lag_s if x == x]
        print(
            f"backlog: broker queue first {stored[0]:.0f} last {stored[-1]:.0f} max "
            f"{max(stored):.0f}; bridge lag max {max(lags, default=0):.1f} s, last "
            f"{' '.join(f'{x:.1f}' for x in steady[-1].lag_s)} s"
        )
    print(
        f"alert latency, gateway publish -> platform topic: n={len(lat)}, p50 "
        f"{percentile(lat, 0.5) or 0:.0f} ms, p99 {percentile(lat, 0.99) or 0:.0f} ms, max "
        f"{max(lat, default=0):.0f} ms; never arrived {lost}"
    )
    if died:
        worst = max(died.values())
        print(
            f"Death -> devices stale in the API: n={len(died)}, max {worst:.1f} s (by polling "
            f"the API every 0.2 s)"
        )
    elif args.deaths:
        print("Death -> stale: no cut gateway was seen stale")
    print(f"{'process':<18} {'CPU s':>7} {'CPU %':>6} {'RSS MB first':>13} {'last':>6} {'max':>6}")
    for name in sorted(cpu):
        rss = [sum(v for k, v in s.rss.items() if k == name or (name == "sims" and
               k.startswith("sim"))) for s in samples] or [0]  # fmt: skip
        rss = [r for r in rss if r] or [0]
        print(
            f"{name:<18} {cpu[name]:7.1f} {cpu[name] / elapsed:6.0%} {rss[0]:13.0f} "
            f"{rss[-1]:6.0f} {max(rss):6.0f}"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--gateways", type=int, default=100)
    p.add_argument("--devices", type=int, default=100)
    p.add_argument("--interval", type=float, default=10.0)
    p.add_argument("--duration", type=float, default=75.0)
    p.add_argument("--bridges", type=int, default=1, choices=[1, 2])
    p.add_argument("--sim-processes", type=int, default=1, choices=[1, 2])
    p.add_argument("--deaths", type=int, default=5)
    p.add_argument("--storm-step", type=float, default=3.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--sample", type=float, default=5.0, help="seconds between two samples")
    p.add_argument("--profile-bridge", type=Path, default=None, metavar="FILE",
                   help="run the first bridge under cProfile, its stats written to FILE")  # fmt: skip
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep the processes' logs here (default: a temporary folder)")  # fmt: skip
    args = p.parse_args()
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
        asyncio.run(run(args, args.workdir))
        return
    with tempfile.TemporaryDirectory(prefix="gw-district-") as work:
        asyncio.run(run(args, Path(work)))


if __name__ == "__main__":
    main()
