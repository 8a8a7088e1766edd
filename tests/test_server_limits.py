"""Hostile neighbours on the API's port: slow clients are cut, a flood of broken requests logs a
bounded number of lines, and a normal request still gets through; the log budget as a table."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest

from device_registry import RegistryStore
from device_registry.http.app import build_app, serving
from device_registry.http.limits import Budget, ServerLimits

SLOW = 300
BROKEN = 300
MAX_LOG_LINES = 60
"""What the whole flood may add to the log: a few records with their tracebacks; unlimited, it
was one ERROR with a ~30-line traceback per broken request (~9,000 lines here)."""


async def _slowloris(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: registry\r\nX-Wait: ")  # and never the rest
    await writer.drain()
    return reader, writer


async def _broken(host: str, port: int) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: registry\r\nContent-Length: lots\r\n\r\n")
    await writer.drain()
    assert (await reader.read()).split(b" ")[1] == b"400"
    writer.close()


@pytest.mark.timeout(120)
async def test_a_flood_of_slow_and_broken_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await RegistryStore.open(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    limits = ServerLimits(keepalive_s=2.0)
    caplog.set_level(logging.INFO)
    try:
        async with serving(build_app(store=store), "127.0.0.1", 0, limits=limits) as url:
            host, port = urlsplit(url).hostname or "", urlsplit(url).port or 0
            slow = await asyncio.gather(*(_slowloris(host, port) for _ in range(SLOW)))
            caplog.clear()
            flood_started = time.monotonic()
            await asyncio.gather(*(_broken(host, port) for _ in range(BROKEN)))

            started = time.monotonic()
            async with aiohttp.ClientSession() as http, http.get(url + "/health") as r:
                assert r.status == 200
            assert time.monotonic() - started < 1.0

            # every slow client is cut by the server once the head timeout passes
            async with asyncio.timeout(limits.keepalive_s + 20):
                ends = await asyncio.gather(*(reader.read() for reader, _ in slow))
            cut_after = time.monotonic() - flood_started
            assert ends == [b""] * SLOW
            for _, writer in slow:
                writer.close()
    finally:
        await store.close()
    lines = sum(len(caplog.handler.format(r).splitlines()) for r in caplog.records)
    assert lines < MAX_LOG_LINES, f"{lines} log lines: {caplog.text[:3000]}"
    assert cut_after < limits.keepalive_s + 20


# (events at these times, with burst 2 per 10 s -> passed?, dropped reported with it)
BUDGET: list[tuple[list[float], list[tuple[bool, int]]]] = [
    ([0, 1, 2, 3], [(True, 0), (True, 0), (False, 0), (False, 0)]),
    ([0, 1, 2, 10.5, 11], [(True, 0), (True, 0), (False, 0), (True, 1), (True, 0)]),
    ([0, 20, 40], [(True, 0), (True, 0), (True, 0)]),  # a quiet log stays whole
    ([0, 0, 0, 0, 0, 10], [(True, 0), (True, 0), (False, 0), (False, 0), (False, 0), (True, 3)]),
]


@pytest.mark.parametrize(("times", "expected"), BUDGET)
def test_log_budget(times: list[float], expected: list[tuple[bool, int]]) -> None:
    budget = Budget(burst=2, window_s=10)
    assert [budget.take(t) for t in times] == expected
