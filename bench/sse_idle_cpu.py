"""Idle CPU of a registry process holding many open alert streams (nothing happens on them).

    .venv/bin/python -m bench.sse_idle_cpu [--streams 200] [--seconds 10] [--distinct-tokens]

Starts ``gridwatch registry serve`` as its own process (SQLite in a temp dir), opens the streams
from this process, waits until the registry counts them (``gridwatch_sse_clients``), then reads
the registry process's CPU time (``/proc/PID/stat``) over the window. Prints the share of one
core, with no streams first for comparison. All streams use the admin token, or each a token of
its own (``--distinct-tokens``: each stream's periodic token check then reads the database).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from tests.services import free_port

TOKEN = "bench-admin-token"


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


async def ready(http: aiohttp.ClientSession, base: str, streams: int) -> None:
    async with asyncio.timeout(60):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{base}/metrics") as r:
                    text = await r.text()
                if f"gridwatch_sse_clients {float(streams)}" in text:
                    return
            await asyncio.sleep(0.2)  # another process's state: polled, with a deadline


async def tokens(http: aiohttp.ClientSession, base: str, n: int) -> list[str]:
    admin = {"Authorization": f"Bearer {TOKEN}"}
    out = []
    for i in range(n):
        async with asyncio.timeout(60):
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    body = {"name": f"bench-{i}", "role": "operator"}
                    async with http.post(f"{base}/api/v1/tokens", json=body, headers=admin) as r:
                        out.append((await r.json())["token"])
                        break
                await asyncio.sleep(0.2)  # the registry may still be starting
    return out


async def hold(http: aiohttp.ClientSession, url: str, token: str) -> None:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        async for _ in r.content:
            pass


async def measure(pid: int, base: str, keys: list[str], seconds: float) -> float:
    conn = aiohttp.TCPConnector(limit=0)
    streams = len(keys)
    async with aiohttp.ClientSession(connector=conn) as http:
        tasks = [asyncio.create_task(hold(http, f"{base}/api/v1/alerts/stream", key))
                 for key in keys]  # fmt: skip
        await ready(http, base, streams)
        await asyncio.sleep(1.0)  # let the opening settle before the window
        start, t0 = cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(seconds)
        used, took = cpu_seconds(pid) - start, time.monotonic() - t0
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return 100 * used / took


async def report(pid: int, base: str, streams: int, seconds: float, distinct: bool) -> None:
    async with aiohttp.ClientSession() as http:
        keys = await tokens(http, base, streams) if distinct else [TOKEN] * streams
    for n in (0, streams):
        share = await measure(pid, base, keys[:n], seconds)
        what = "a token each" if distinct else "one token"
        print(f"{n:5d} idle streams ({what}): {share:5.1f} % of a core over {seconds:.0f} s")


def main(streams: int, seconds: float, distinct: bool) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp, open(Path(tmp) / "registry.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridwatch.top.cli", "registry", "serve", "--data-dir", tmp,
             "--http-port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "GRIDWATCH_ADMIN_TOKEN": TOKEN},
        )  # fmt: skip
        try:
            asyncio.run(report(proc.pid, f"http://127.0.0.1:{port}", streams, seconds, distinct))
        finally:
            proc.terminate()
            proc.wait(15)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--distinct-tokens", action="store_true")
    args = parser.parse_args()
    main(args.streams, args.seconds, args.distinct_tokens)
