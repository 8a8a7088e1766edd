"""Delivery latency at the centre: from the registry transaction that stores an alert to its
message arriving at a webhook receiver and at an SSE client (same process, loopback, SQLite).

    .venv/bin/python -m bench.delivery_bench [--alerts 200]

Prints p50/p99/max per channel. Each alert is applied as the bridge applies an ingest step.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from aiohttp import web

from device_registry.delivery.runtime import Delivery
from device_registry.delivery.webhooks import RetryPolicy
from device_registry.http.auth import Role
from tests._ops_helpers import registry, smoke


async def main(n: int) -> None:
    sent: dict[str, float] = {}
    got: dict[str, dict[str, float]] = {"webhook": {}, "sse": {}}
    done = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if body["kind"] == "alert":
            got["webhook"][body["alert_id"]] = time.perf_counter()
            if len(got["webhook"]) == n and len(got["sse"]) == n:
                done.set()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = "http://{}:{}/hook".format(*runner.addresses[0][:2])
    with tempfile.TemporaryDirectory() as tmp:
        delivery = Delivery(poll_s=1.0, retry=RetryPolicy(attempts=1))
        async with registry(Path(tmp), delivery) as reg:
            await reg.call("POST", "/api/v1/webhooks", Role.ADMIN, {"url": url, "secret": "x" * 16})

            async def sse() -> None:
                async with reg.http.get(f"{reg.url}/api/v1/alerts/stream?since=0",
                                        headers=reg.auth(Role.PLATFORM)) as r:  # fmt: skip
                    async for line in r.content:
                        if line.startswith(b"data: "):
                            body = json.loads(line[6:])
                            if body["kind"] == "alert":
                                got["sse"][body["alert_id"]] = time.perf_counter()
                                if len(got["webhook"]) == n and len(got["sse"]) == n:
                                    done.set()

            reader = asyncio.create_task(sse())
            for i in range(n):
                aid = f"a{i}"
                sent[aid] = time.perf_counter()
                await reg.ingest(smoke(aid, device=f"sd-{i}", grid=f"G{i}"))
                await asyncio.sleep(0.02)  # alerts arrive one by one, not as a burst
            await asyncio.wait_for(done.wait(), 60)
            reader.cancel()
    await runner.cleanup()
    for channel, seen in got.items():
        lat = sorted((seen[a] - sent[a]) * 1000 for a in sent)
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(f"{channel:8s} n={len(lat)} p50={statistics.median(lat):.1f} ms "
              f"p99={p99:.1f} ms max={lat[-1]:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--alerts", type=int, default=200)
    asyncio.run(main(ap.parse_args().alerts))
