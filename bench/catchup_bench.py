"""Catch-up after a store outage: how fast one bridge ingests what waited while PostgreSQL (the
registry) or VictoriaMetrics (the time-series store) was down.

Starts its own mosquitto, VictoriaMetrics and PostgreSQL and one ``gridwatch bridge run``. For each
store in turn: stop it, publish ``--batches`` telemetry batches of 500 readings (they wait in the
broker and the bridge, unacknowledged), start it again, and time, from the moment the store is back:
the wait before the first batch is recorded (the bridge's retry backoff: 0.2 s doubling, at most
5 s), and the rate at which the rest is then recorded in the registry (points/s, the registry
records a batch in the step that wrote it). The registry recording every batch is the end of
catch-up: the time-series write comes first in each step.

    .venv/bin/python -m bench.catchup_bench [--batches 200] [--outage-s 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from bench.bridge_bench import PER_BATCH, count_seen, payloads, publish, start_bridges
from tests.services import Mosquitto, Postgres, Victoria


async def seen_or_none(db_url: str) -> int | None:
    try:
        return await count_seen(db_url)
    except (OSError, asyncpg.PostgresError):  # the database is starting: not yet
        return None


async def outage(
    name: str, stop: Callable[[], None], start: Callable[[], None], mq: Mosquitto, db_url: str,
    batches: int, outage_s: float, t0: int,
) -> str:  # fmt: skip
    before = await count_seen(db_url)
    messages = payloads(batches, t0)
    stop()
    down = time.monotonic()
    await asyncio.to_thread(publish, mq.port, messages)
    await asyncio.sleep(max(0.0, outage_s - (time.monotonic() - down)))  # the outage's length
    start()
    back = time.monotonic()
    first = None
    while True:
        seen = await seen_or_none(db_url)
        now = time.monotonic()
        if seen is not None and seen > before and first is None:
            first = now
            first_seen = seen
        if seen is not None and seen >= before + batches:
            break
        if now - back > 300:
            raise TimeoutError(f"{name}: only {seen} of {before + batches} batches recorded")
        await asyncio.sleep(0.02)
    assert first is not None
    points = batches * PER_BATCH
    rest = (before + batches - first_seen) * PER_BATCH
    span = max(now - first, 1e-3)
    return (f"{name} down {outage_s:.0f} s with {points:,} points waiting: first recorded "
            f"{first - back:.2f} s after its return; all in {now - back:.2f} s "
            f"({points / (now - back):,.0f} points/s from its return, "
            f"{rest / span:,.0f} points/s once ingesting)")  # fmt: skip


async def run(args: argparse.Namespace, work: Path) -> None:
    pg_dir = Path(tempfile.mkdtemp(prefix="gw-catchup-pg-"))
    mq = Mosquitto(work / "mq").start()
    vm = Victoria(work / "vm", extra_args=["-dedup.minScrapeInterval=1ms"]).start()
    pg = Postgres(pg_dir).start()
    db_url = pg.create_database("catchup")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs = start_bridges(1, mq, vm, work, db_url)
        t0 = int(time.time() * 1000) - 3_600_000
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}")  # fmt: skip
        print(await outage("VictoriaMetrics", vm.stop, vm.start, mq, db_url, args.batches,
                           args.outage_s, t0))  # fmt: skip
        print(await outage("PostgreSQL", pg.stop, pg.start, mq, db_url, args.batches,
                           args.outage_s, t0 + 10_000_000))  # fmt: skip
    finally:
        for p in procs:
            p.kill()
            p.wait(10)
        vm.stop()
        mq.stop()
        if (pg.data / "postmaster.pid").exists():
            pg.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=200, help="of 500 points, per outage")
    parser.add_argument("--outage-s", type=float, default=20.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gw-catchup-bench-") as work:
        asyncio.run(run(args, Path(work)))


if __name__ == "__main__":
    main()
