"""Edge polling throughput: 500 simulated Modbus TCP devices, simulators in other processes.

    .venv/bin/python bench/edge_poll_bench.py [--devices 500] [--procs 4] [--interval 0.5]
                                              [--points 20] [--duration 20]

Prints readings/s (samples handed to the sink), CPU seconds of the polling process per 1,000
readings, and the polling process's peak RSS. The simulators run as ``gridwatch sim``
processes, one endpoint each, because one Python Modbus server tops out near 7,600 reads/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers import build_drivers  # noqa: E402
from drivers.base import PollOutcome  # noqa: E402
from gridwatch.ground.gatewayconf import load_gateway  # noqa: E402
from tests._drivers_helpers import free_port, wait_for_output  # noqa: E402

TYPES = ["uint16", "int16", "float32", "uint32", "float32"]


def profile_yaml(points: int, interval: float) -> str:
    """A device with ``points`` points packed in one register range (one read per poll)."""
    lines = ["profile:", "  id: bench-device", "  name: bench", "  kind: test",
             "  protocol: modbus", f"  interval_s: {interval}", "  points:"]  # fmt: skip
    address = 0
    for i in range(points):
        dtype = TYPES[i % len(TYPES)]
        lines.append(f"    p{i}: {{table: holding, address: {address}, data_type: {dtype}, "
                     "range: {min: -1000000, max: 1000000}}")  # fmt: skip
        address += 2 if dtype in ("float32", "uint32") else 1
    lines += ["  sim:", "    p0: {counter: true}", "    p2: {base: 1.5, noise: 0.1}"]
    return "\n".join(lines) + "\n"


def field_yaml(ports: list[int], per_port: int, timeout: float) -> str:
    """The buses and devices sections: one bus per simulator endpoint, ``per_port`` units each."""
    buses = "\n".join(
        f"  - {{type: modbus_tcp, id: b{i}, host: 127.0.0.1, port: {p}, timeout_s: {timeout}, "
        "max_concurrency: 16}"
        for i, p in enumerate(ports)
    )
    devices = "\n".join(
        f"  - {{id: d{i}-{u}, profile: bench-device, bus: b{i}, unit_id: {u}}}"
        for i in range(len(ports)) for u in range(1, per_port + 1)
    )  # fmt: skip
    return f"buses:\n{buses}\ndevices:\n{devices}\n"


def gateway_yaml(ports: list[int], per_port: int, timeout: float) -> str:
    return "gateway: {id: gw-bench}\nprofiles_dir: profiles\n" + field_yaml(
        ports, per_port, timeout
    )


def add_field_args(ap: argparse.ArgumentParser) -> None:
    """The simulated field's options, shared by this bench and the whole-edge bench."""
    ap.add_argument("--devices", type=int, default=500)
    ap.add_argument("--procs", type=int, default=4, help="simulator processes (one port each)")
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--points", type=int, default=20)


@dataclass(frozen=True)
class Field:
    root: Path  # a temporary directory with profiles/bench.yaml; gone when the field stops
    ports: list[int]
    per_port: int
    timeout: float

    def yaml(self) -> str:
        """The buses and devices sections of a gateway config polling this field."""
        return field_yaml(self.ports, self.per_port, self.timeout)


@contextlib.contextmanager
def simulated_field(ap: argparse.ArgumentParser, args: argparse.Namespace) -> Iterator[Field]:
    """``args.devices`` simulated devices served by ``args.procs`` ``gridwatch sim``
    processes, until the block ends."""
    per_port = -(-args.devices // args.procs)
    if per_port > 247:
        ap.error("more than 247 devices per simulator: raise --procs")
    timeout = min(1.0, args.interval * 0.8)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "profiles").mkdir()
        (root / "profiles" / "bench.yaml").write_text(profile_yaml(args.points, args.interval))
        ports = [free_port() for _ in range(args.procs)]
        sims = start_sims(root, ports, per_port, timeout)
        try:
            yield Field(root, ports, per_port, timeout)
        finally:
            for proc in sims:
                proc.terminate()
                proc.wait(timeout=10)


def start_sims(
    root: Path, ports: list[int], per_port: int, timeout: float
) -> list[subprocess.Popen[str]]:
    procs = []
    for i, port in enumerate(ports):
        cfg = root / f"sim{i}.yaml"
        text = gateway_yaml([port], per_port, timeout).replace("id: b0", f"id: b{i}")
        cfg.write_text(text.replace("bus: b0", f"bus: b{i}").replace("id: d0-", f"id: d{i}-"))
        proc = subprocess.Popen([sys.executable, "-m", "gridwatch.top.cli", "sim", "-c", str(cfg)],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip
        wait_for_output(proc, "sim: serving", 60)
        procs.append(proc)
    return procs


async def poll(cfg: Path, warmup: float, duration: float) -> None:
    _, devices = load_gateway(cfg)
    drivers = build_drivers(devices)
    counted = {"readings": 0, "failed": 0}

    def sink(outcome: PollOutcome) -> None:
        counted["readings"] += len(outcome.samples) if outcome.ok else 0
        counted["failed"] += not outcome.ok

    tasks = [asyncio.create_task(d.run(sink)) for d in drivers]
    await asyncio.sleep(warmup)  # a benchmark's measuring window, not a wait for an event
    counted.update(readings=0, failed=0)
    cpu0, t0 = time.process_time(), time.monotonic()
    await asyncio.sleep(duration)
    cpu, wall = time.process_time() - cpu0, time.monotonic() - t0
    readings = counted["readings"]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    skipped = sum(h.polls_skipped for d in drivers for h in d.health())
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"devices            {len(devices)} on {len(drivers)} endpoint(s)")
    print(f"readings/s         {readings / wall:,.0f}")
    print(
        f"CPU s / 1k reads   {cpu / max(readings, 1) * 1000:.4f}  (CPU {cpu / wall:.0%} of a core)"
    )
    print(f"peak RSS           {rss_mb:.1f} MB")
    print(f"failed polls       {counted['failed']}   polls skipped (overrun) {skipped}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_field_args(ap)
    ap.add_argument("--duration", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=3.0)
    args = ap.parse_args()
    with simulated_field(ap, args) as field:
        cfg = field.root / "gw.yaml"
        cfg.write_text(gateway_yaml(field.ports, field.per_port, field.timeout))
        asyncio.run(poll(cfg, args.warmup, args.duration))
    return 0


if __name__ == "__main__":
    sys.exit(main())
