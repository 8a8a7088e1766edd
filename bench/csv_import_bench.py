"""CSV import through the API: rows per second at 1,000 / 10,000 / 50,000 rows, and the longest an
ingest commit waited meanwhile.

    .venv/bin/python -m bench.csv_import_bench [--rows 1000 10000 50000] [--db-url URL]

Each size gets a fresh registry (a SQLite file in a temp dir unless ``--db-url`` names an empty
PostgreSQL database, which is then used for every size in turn, 50 gateways registered once per
size under a fresh prefix) served in this process, as ``gridwatch registry serve`` serves it; an
ingest loop commits every ~50 ms during the import, as the bridge would. It is a benchmark, not a
test: it prints figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import tempfile
import time
import uuid

import aiohttp

from device_registry import RegistryStore
from device_registry.http.app import build_app, serving
from device_registry.http.auth import SYSTEM, Role, TokenRequest, issue
from device_registry.ingest.changes import Changes, Seen
from device_registry.inventory.wiring import InstallerSettings

GATEWAYS = 50
BUSES = [{"type": "modbus_tcp", "id": f"b{i}", "host": "10.0.0.5", "timeout_s": 0.5}
         for i in range(5)]  # fmt: skip


def csv_text(rows: int, tag: str) -> str:
    out = ["gateway,id,profile,bus,unit_id,district,street,grid,install_date,firmware,labels"]
    for i in range(rows):
        k = i // GATEWAYS  # each device of a gateway at its own bus and unit id (1,000 a gateway)
        out.append(f"{tag}gw{i % GATEWAYS:02d},wl-{i:05d},water-level-ultrasonic,b{k % 5},"
                   f"{k // 5 % 247 + 1},310104,漕溪北路 {i % 40},310104017021{i % 25:03d},2026-11-20,1.2,"
                   f"crew={i % 9};lot=A")  # fmt: skip
    return "\n".join(out) + "\n"


async def ingest(store: RegistryStore, done: asyncio.Event) -> list[float]:
    waits = []
    while not done.is_set():
        now = time.time_ns() // 1_000_000
        ch = Changes(now=now, seen_ids={uuid.uuid4().hex: Seen("gw-field")},
                     device_seen={("gw-field", "s1"): now})  # fmt: skip
        started = time.monotonic()
        await store.apply(ch)
        waits.append(time.monotonic() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), 0.05)
    return waits


async def one(url: str, rows: int) -> tuple[float, float, int]:
    store = await RegistryStore.open(url)
    token = (await issue(store, TokenRequest(name="bench", role=Role.INSTALLER), SYSTEM)).token
    tag = f"r{rows}"
    try:
        async with (
            serving(build_app(store=store, installers=InstallerSettings()), "127.0.0.1", 0) as base,
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"},
                                  timeout=aiohttp.ClientTimeout(total=900)) as http,
        ):  # fmt: skip
            for g in range(GATEWAYS):
                body = {"id": f"{tag}gw{g:02d}", "buses": BUSES}
                async with http.post(base + "/api/v1/gateways", json=body) as r:
                    assert r.status == 201, await r.text()
            text = csv_text(rows, tag).encode()
            done = asyncio.Event()
            waits_task = asyncio.create_task(ingest(store, done))
            started = time.monotonic()
            async with http.post(base + "/api/v1/devices/import", data=text,
                                 headers={"Content-Type": "text/csv"}) as r:  # fmt: skip
                assert r.status == 200, (await r.text())[:500]
            took = time.monotonic() - started
            done.set()
            waits = await waits_task
            return took, max(waits), len(text)
    finally:
        await store.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    ap.add_argument("--db-url", help="an empty PostgreSQL database (default: SQLite files)")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"csv import bench: {platform.python_version()}, {os.cpu_count()} cores, "
          f"load average {load:.1f} at start, {'PostgreSQL' if args.db_url else 'SQLite'}")  # fmt: skip
    print(f"{'rows':>7} {'bytes':>10} {'seconds':>8} {'rows/s':>8} {'max ingest wait s':>18}")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.rows:
            url = args.db_url or f"sqlite+aiosqlite:///{tmp}/registry-{n}.db"
            took, worst, size = await one(url, n)
            print(f"{n:>7} {size:>10} {took:>8.2f} {n / took:>8.0f} {worst:>18.2f}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
