"""The server-sent-events stream of platform messages (``GET /api/v1/alerts/stream``).

Each event is ``id: <seq>``, ``event: <kind>``, ``data: <the JSON document>``: the same message
as on MQTT and webhooks. A client that reconnects with ``Last-Event-ID`` (browsers do) resumes
after that seq; a new client starts with what happens next. A comment line every ``heartbeat_s``
keeps proxies from closing an idle stream.
"""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from device_registry.alerts.store import FeedEvent, OpsStore, matches
from device_registry.delivery.feed import FeedSignal


def frame(event: FeedEvent) -> bytes:
    data = json.dumps(event.payload, separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {data}\n\n".encode()


class SseHub:
    """Serves the streams, and ends them all when the app shuts down (aiohttp would otherwise
    wait for them up to its shutdown timeout)."""

    def __init__(self, ops: OpsStore, signal: FeedSignal, heartbeat_s: float = 15.0) -> None:
        self.ops, self.signal, self.heartbeat_s = ops, signal, heartbeat_s
        self._streams: set[asyncio.Task[object]] = set()

    @property
    def clients(self) -> int:
        return len(self._streams)

    async def close(self) -> None:
        for task in list(self._streams):
            task.cancel()

    async def stream(
        self, request: web.Request, district: str | None, category: str | None, start: int | None
    ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        })  # fmt: skip
        await resp.prepare(request)
        cursor = await self.ops.last_seq() if start is None else start
        await resp.write(b": gridwatch alert stream\nretry: 2000\n\n")
        task = asyncio.current_task()
        assert task is not None
        self._streams.add(task)
        try:
            await self._pump(resp, cursor, district, category)
        except (ConnectionResetError, asyncio.CancelledError):
            pass  # the client went away, or the server is stopping
        finally:
            self._streams.discard(task)
        return resp

    async def _pump(
        self, resp: web.StreamResponse, cursor: int, district: str | None, category: str | None
    ) -> None:
        quiet_since = time.monotonic()
        while True:
            for event in await self.ops.feed(cursor):
                cursor = event.seq
                if matches(event, district, category):
                    await resp.write(frame(event))
                    quiet_since = time.monotonic()
            if time.monotonic() - quiet_since > self.heartbeat_s:
                await resp.write(b": keep-alive\n\n")
                quiet_since = time.monotonic()
            await self.signal.wait()
