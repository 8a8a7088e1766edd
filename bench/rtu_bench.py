"""Modbus RTU polling against what the baud rate physically allows.

    .venv/bin/python bench/rtu_bench.py [--baud 9600] [--stopbits 1] [--registers 10]
                                        [--devices 16] [--interval 0.25] [--duration 15]

A line of ``--devices`` devices, each serving a map of ``--registers`` holding registers
(mixed types, packed, so the planner reads them in one request), is polled by the real
Modbus RTU driver over a socat pty pair. The simulator (``gridwatch sim``, its own process)
answers each request when a real line would have delivered the last byte of the answer. The
intervals are short enough that the line is never idle for want of work, so the achieved rate
is the driver's best on this line; skipped polls are expected and counted.

The physical limit is computed here, independently of the simulator's code: one read of N
registers is a request of 8 bytes and a response of 5 + 2N bytes, each byte 1 start + 8 data
(+ 1 parity) + stop bits, and each frame is followed by a 3.5-character silence (1.75 ms above
19200 baud). Target: at least 90% of that rate.

A Linux pseudo-terminal refuses parity (tcsetattr: EINVAL), so the line is 8N1 or 8N2;
8N2 has the 11-bit characters of the Modbus default 8E1, hence the same timing.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from drivers.base import PollOutcome  # noqa: E402
from drivers.modbus import ModbusDriver  # noqa: E402
from drivers.planner import ReadPlan  # noqa: E402
from gridwatch.ground.contract import Quality  # noqa: E402
from gridwatch.ground.gatewayconf import ModbusRtuBus, load_gateway  # noqa: E402
from gridwatch.ground.profiles import ModbusProfile  # noqa: E402
from tests._drivers_helpers import wait_for_output  # noqa: E402

TYPES = ["uint16", "int16", "float32", "uint32"]


def profile_yaml(registers: int, interval: float) -> str:
    lines = ["profile:", "  id: rtu-bench", "  name: bench", "  kind: test",
             "  protocol: modbus", f"  interval_s: {interval}", "  points:"]  # fmt: skip
    address, i = 0, 0
    while address < registers:
        dtype = TYPES[i % len(TYPES)]
        width = 2 if dtype in ("float32", "uint32") else 1
        if address + width > registers:
            dtype, width = "uint16", 1
        lines.append(f"    p{i}: {{table: holding, address: {address}, data_type: {dtype}}}")
        address, i = address + width, i + 1
    lines += ["  sim:", "    p0: {counter: true}", "    p1: {base: 12, noise: 3}"]
    return "\n".join(lines) + "\n"


def gateway_yaml(port: str, args: argparse.Namespace) -> str:
    bus = (f"{{type: modbus_rtu, id: line, port: {port}, baudrate: {args.baud}, "
           f"stopbits: {args.stopbits}, timeout_s: {args.timeout}}}")  # fmt: skip
    devices = "\n".join(f"  - {{id: d{u}, profile: rtu-bench, bus: line, unit_id: {u}}}"
                        for u in range(1, args.devices + 1))  # fmt: skip
    return (
        f"gateway: {{id: gw-rtu}}\nprofiles_dir: profiles\nbuses:\n  - {bus}\ndevices:\n{devices}\n"
    )


def physical_limit(bus: ModbusRtuBus, profile: ModbusProfile) -> tuple[float, int, float]:
    """(seconds of line time per poll of one device, requests per poll, naive seconds per
    poll with one request per point) from bytes, bits per character and frame gaps."""
    bits = 1 + bus.bytesize + (0 if bus.parity == "N" else 1) + bus.stopbits
    char_s = bits / bus.baudrate
    gap_s = 3.5 * char_s if bus.baudrate <= 19200 else 0.00175

    def exchange(table: str, count: int) -> float:
        data = 2 * count if table in ("holding", "input") else (count + 7) // 8
        return (8 + (5 + data)) * char_s + 2 * gap_s

    plan = ReadPlan(profile.points).requests
    poll_s = sum(exchange(r.table, r.count) for r in plan)
    naive_s = sum(exchange(p.table, p.count) for p in profile.points.values())
    return poll_s, len(plan), naive_s


async def run(cfg: Path, warmup: float, duration: float) -> None:
    _, devices = load_gateway(cfg)
    bus = devices[0].bus
    assert isinstance(bus, ModbusRtuBus) and isinstance(devices[0].profile, ModbusProfile)
    driver = ModbusDriver(bus, devices)
    counted = {"polls": 0, "readings": 0, "failed": 0}

    def sink(outcome: PollOutcome) -> None:
        if not outcome.ok:
            counted["failed"] += 1
            return
        counted["polls"] += 1
        counted["readings"] += sum(s.quality is Quality.GOOD for s in outcome.samples)

    task = asyncio.create_task(driver.run(sink))
    await asyncio.sleep(warmup)  # a benchmark's measuring window, not a wait for an event
    counted.update(polls=0, readings=0, failed=0)
    skipped0 = sum(h.polls_skipped for h in driver.health())
    t0 = time.monotonic()
    await asyncio.sleep(duration)
    wall = time.monotonic() - t0
    polls, readings, failed = counted["polls"], counted["readings"], counted["failed"]
    skipped = sum(h.polls_skipped for h in driver.health()) - skipped0
    if task.done():  # the driver died: say why rather than print zeros
        task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    poll_s, per_poll, naive_s = physical_limit(bus, devices[0].profile)
    points = len(devices[0].profile.points)
    phys_req, phys_read = per_poll / poll_s, points / poll_s
    got_req, got_read = polls * per_poll / wall, readings / wall
    parity = f"{bus.bytesize}{bus.parity}{bus.stopbits}"
    print(f"line               {bus.baudrate} baud {parity}, {len(devices)} devices, "
          f"{points} points in {per_poll} request(s) per poll")  # fmt: skip
    print(f"physical limit     {phys_req:,.1f} requests/s, {phys_read:,.1f} readings/s "
          f"({poll_s * 1000:.2f} ms of line per poll)")  # fmt: skip
    print(f"  one read/point   {points / naive_s:,.1f} readings/s (what coalescing saves)")
    print(f"achieved           {got_req:,.1f} requests/s, {got_read:,.1f} readings/s "
          f"over {wall:.1f} s")  # fmt: skip
    print(f"of physical        {got_req / phys_req:.1%} requests, {got_read / phys_read:.1%} "
          "readings  (target >= 90%)")  # fmt: skip
    print(f"failed polls       {failed}   polls skipped (line saturated) {skipped}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baud", type=int, default=9600)
    ap.add_argument("--stopbits", type=int, choices=[1, 2], default=1)
    ap.add_argument("--registers", type=int, default=10, help="registers in each device's map")
    ap.add_argument("--devices", type=int, default=16)
    ap.add_argument("--interval", type=float, default=0.25, help="short enough to saturate")
    ap.add_argument("--timeout", type=float, default=0.2)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "profiles").mkdir()
        (root / "profiles" / "bench.yaml").write_text(profile_yaml(args.registers, args.interval))
        (root / "gw.yaml").write_text(gateway_yaml(str(root / "ttyRTU"), args))
        sim = subprocess.Popen([sys.executable, "-m", "gridwatch.top.cli", "sim", "-c",
                                str(root / "gw.yaml")], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            wait_for_output(sim, "sim: serving", 30)
            asyncio.run(run(root / "gw.yaml", args.warmup, args.duration))
        finally:
            sim.terminate()
            sim.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
