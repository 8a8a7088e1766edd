"""Replay of an outage end to end, acknowledged by the centre; and what the acks cost at rest.

    .venv/bin/python -m bench.replay_e2e_bench [--devices 500] [--points 20] [--interval 1]
                                               [--outage-s 60] [--steady-s 20] [--procs 4]

**Replay.** A gateway's outbox is filled with ``--outage-s`` seconds of ``--devices`` x
``--points`` polled every ``--interval`` (600,000 readings by default), by the edge's own
pipeline with its uplink down, as an outage leaves it. Then every part runs as its own process,
as in production: ``gridwatch edge run`` on that outbox, a real mosquitto, ``gridwatch bridge
run`` (registry on SQLite, telemetry to VictoriaMetrics). Timed from the edge's uplink
connecting until its outbox is empty and the registry has committed every batch. With
``mqtt.ack: centre`` (the default) a message leaves the outbox only when the centre's Ack names
it, so an empty outbox means: sent, written to VictoriaMetrics, committed to the registry,
acknowledged back and deleted. Target: >= 50,000 readings/s. VictoriaMetrics is then counted:
every reading stored once.

**Steady state.** ``--steady-s`` seconds of the same devices simulated by ``gridwatch sim``
processes and polled by a second edge process (its own gateway) through the same broker and
bridge; a subscriber counts the centre's Acks (``P/gw/+/ack``) per second, beside the uplink's
messages per second for scale.

Printed: the figures, the machine and its load average (the machine may be shared).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.edge_poll_bench import add_field_args, profile_yaml, simulated_field  # noqa: E402
from drivers.base import PollOutcome, Sample  # noqa: E402
from edge.outbox import Outbox  # noqa: E402
from edge.pipeline import Pipeline  # noqa: E402
from gridwatch.ground.contract import Quality, Topics  # noqa: E402
from tests.services import Mosquitto, Victoria, free_port  # noqa: E402
from tests.test_metrics import scrape  # noqa: E402

PREFIX = "bench"
REPLAY_GW = "gw-replay"
STEADY_GW = "gw-steady"


def edge_yaml(gateway: str, outbox: Path, mqtt_port: int, body: str) -> str:
    return yaml.safe_dump({
        "gateway": {"id": gateway}, "profiles_dir": "profiles", "health_interval_s": 30,
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port, "prefix": PREFIX, "batch_max": 500},
        "outbox": {"path": str(outbox), "max_bytes": 4 * 2**30},
    }, sort_keys=False) + body  # fmt: skip


IDLE_FIELD = (
    "buses:\n  - {type: modbus_tcp, id: idle, host: 127.0.0.1, port: %d, timeout_s: 0.2}\n"
    "devices:\n  - {id: idle-1, profile: bench-device, bus: idle, unit_id: 1, interval_s: 3600}\n"
)
"""The replaying gateway polls one device, once an hour, on a port nobody serves: the replay
is measured alone."""


def fill(outbox: Path, devices: int, points: int, interval: float, outage_s: float) -> int:
    """An outage's polls, through the edge's own pipeline with the uplink down; returns the
    number of telemetry batches queued."""
    box = Outbox(outbox, 4 * 2**30)
    pipe = Pipeline(REPLAY_GW, [], box, Topics(PREFIX), time.time, batch_max=500)
    t0 = int((time.time() - outage_s) * 1000)
    for k in range(int(outage_s / interval)):
        ts = t0 + int(k * interval * 1000)
        for d in range(devices):
            samples = [Sample(f"r{d}", f"p{p}", float(k), "m", ts + d, Quality.GOOD)
                       for p in range(points)]  # fmt: skip
            pipe.sink(PollOutcome(f"r{d}", ts + d, samples, True))
    pipe.flush()
    batches = box.depth
    box.close()
    return batches


def committed(registry: Path, gateway: str) -> int:
    """Telemetry messages of ``gateway`` the registry has committed (its dedupe ids)."""
    if not registry.exists():
        return 0
    with contextlib.closing(sqlite3.connect(registry, timeout=5)) as db:
        row = db.execute(
            "SELECT count(*) FROM seen_messages WHERE gateway = ? AND stream = 'telemetry'",
            (gateway,),
        ).fetchone()
    return int(row[0])


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gridwatch.top.cli", *args], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)  # fmt: skip


def wait_log(proc: subprocess.Popen[bytes], log: Path, needle: bytes, within_s: float = 90) -> None:
    deadline = time.monotonic() + within_s
    while needle not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{log.name}: no {needle!r}:\n{log.read_text()[-3000:]}")
        time.sleep(0.05)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(port: int, name: str) -> float:
    return scrape(f"http://127.0.0.1:{port}/metrics")[(name, ())]


@contextlib.contextmanager
def stopping(*procs: subprocess.Popen[bytes]) -> Iterator[None]:
    try:
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()


async def replay(args: argparse.Namespace, work: Path, mq: Mosquitto, vm: Victoria,
                 bridge: subprocess.Popen[bytes]) -> None:  # fmt: skip
    readings = args.devices * args.points * int(args.outage_s / args.interval)
    t = time.perf_counter()
    batches = fill(work / "replay" / "outbox.db", args.devices, args.points, args.interval,
                   args.outage_s)  # fmt: skip
    print(f"outage: {readings:,} readings in {batches:,} telemetry messages, "
          f"filled in {time.perf_counter() - t:.1f}s")  # fmt: skip
    cfg = work / "replay" / "gateway.yaml"
    cfg.write_text(edge_yaml(REPLAY_GW, work / "replay" / "outbox.db", mq.port,
                             IDLE_FIELD % free_port()))  # fmt: skip
    port = free_port()
    log = work / "edge-replay.log"
    edge = spawn(["edge", "run", "-c", str(cfg), "--metrics-port", str(port)], log)
    registry = work / "central" / "registry.db"
    with stopping(edge):
        wait_log(edge, log, b"edge agent")
        while True:  # the metrics listener comes up with the agent; the uplink just after
            with contextlib.suppress(OSError, KeyError):
                if metric(port, "gridwatch_edge_uplink_connected") == 1:
                    break
            await asyncio.sleep(0.01)
        assert mq.proc is not None
        mq_pid = mq.proc.pid
        t0 = time.perf_counter()
        cpu0 = {"edge": cpu_s(edge.pid), "bridge": cpu_s(bridge.pid), "mosquitto": cpu_s(mq_pid)}
        emptied = stored = 0.0
        while not (emptied and stored):
            depth = await asyncio.to_thread(metric, port, "gridwatch_edge_outbox_depth")
            if not emptied and depth == 0:
                emptied = time.perf_counter() - t0
            if not stored and await asyncio.to_thread(committed, registry, REPLAY_GW) >= batches:
                stored = time.perf_counter() - t0
            if time.perf_counter() - t0 > 600:
                raise SystemExit(f"not drained in 600 s: outbox depth {depth}")
            await asyncio.sleep(0.05)
        cpu = {"edge": cpu_s(edge.pid), "bridge": cpu_s(bridge.pid), "mosquitto": cpu_s(mq_pid)}
    wall = max(emptied, stored)
    load = os.getloadavg()
    print(f"replay: outbox empty after {emptied:.2f}s, registry committed all after "
          f"{stored:.2f}s: {readings / wall:,.0f} readings/s end to end "
          f"(target >= 50,000; load average during it {load[0]:.1f})")  # fmt: skip
    print("replay: CPU seconds during it: " + ", ".join(
        f"{k} {cpu[k] - cpu0[k]:.1f} ({readings / max(cpu[k] - cpu0[k], 0.01):,.0f} readings per "
        "CPU-second)" for k in cpu))  # fmt: skip
    in_vm = await asyncio.to_thread(count_stored, vm, REPLAY_GW)
    print(f"replay: VictoriaMetrics holds {in_vm:,} of {readings:,} readings")


def count_stored(vm: Victoria, gateway: str) -> int:
    return sum(len(s["values"]) for s in vm.export(f'gridwatch_value{{gateway="{gateway}"}}'))


async def steady(args: argparse.Namespace, ap: argparse.ArgumentParser, work: Path,
                 mq: Mosquitto) -> None:  # fmt: skip
    with simulated_field(ap, args) as field:
        (field.root / "gateway.yaml").write_text(
            edge_yaml(STEADY_GW, work / "steady" / "outbox.db", mq.port, field.yaml())
        )
        log = work / "edge-steady.log"
        edge = spawn(["edge", "run", "-c", str(field.root / "gateway.yaml")], log)
        topics = Topics(PREFIX)
        acks = ups = 0
        async with aiomqtt.Client("127.0.0.1", mq.port) as sub:
            await sub.subscribe([(topics.ack(STEADY_GW), 1), (topics.telemetry(STEADY_GW), 1)])

            async def count() -> None:
                nonlocal acks, ups
                async for msg in sub.messages:
                    if str(msg.topic).endswith("/ack"):
                        acks += 1
                    else:
                        ups += 1

            counter = asyncio.create_task(count())
            with stopping(edge):
                await asyncio.to_thread(wait_log, edge, log, b"uplink: session")
                await asyncio.sleep(args.warmup)  # the first polls, the registry's new devices
                a0, u0, t0 = acks, ups, time.perf_counter()
                await asyncio.sleep(args.steady_s)
                wall = time.perf_counter() - t0
                a, u = acks - a0, ups - u0
            counter.cancel()
            await asyncio.gather(counter, return_exceptions=True)
    load = os.getloadavg()
    print(f"steady: {args.devices} devices x {args.points} points every {args.interval:g}s on one "
          f"gateway: {u / wall:.1f} telemetry messages/s up, {a / wall:.2f} acks/s down "
          f"({a} in {wall:.0f}s; load average {load[0]:.1f})")  # fmt: skip


async def run(args: argparse.Namespace, ap: argparse.ArgumentParser, work: Path) -> None:
    mq = Mosquitto(work / "mq").start()
    vm = Victoria(work / "vm").start()
    log = work / "bridge.log"
    bridge = spawn(["bridge", "run", "--mqtt-host", "127.0.0.1", "--mqtt-port", str(mq.port),
                    "--prefix", PREFIX, "--influx-url", vm.url, "--data-dir",
                    str(work / "central"), "--bridge-id", "bench-bridge",
                    "--mqtt-protocol", "5"], log)  # fmt: skip
    try:
        with stopping(bridge):
            wait_log(bridge, log, b"bridge subscribed")
            await replay(args, work, mq, vm, bridge)
            if args.steady_s > 0:
                await steady(args, ap, work, mq)
    finally:
        mq.stop()
        vm.stop()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"{platform.python_implementation()} {platform.python_version()}; load average "
          f"now {' '.join(f'{x:.1f}' for x in os.getloadavg())}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_field_args(ap)
    ap.set_defaults(interval=1.0)
    ap.add_argument("--outage-s", type=float, default=60.0)
    ap.add_argument("--steady-s", type=float, default=20.0, help="0: skip the steady state")
    ap.add_argument("--warmup", type=float, default=5.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        (work / "replay").mkdir()
        (work / "replay" / "profiles").mkdir()
        (work / "replay" / "profiles" / "bench.yaml").write_text(
            profile_yaml(args.points, args.interval)
        )
        asyncio.run(run(args, ap, work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
