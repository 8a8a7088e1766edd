"""The server-sent-events stream of platform messages (``GET /api/v1/alerts/stream``).

Each event is ``id: <seq>``, ``event: <kind>``, ``data: <the JSON document>``: the same message
as on MQTT and webhooks. A client that reconnects with ``Last-Event-ID`` (browsers do) resumes
after that seq; a new client starts with what happens next. A comment line every ``heartbeat_s``
keeps proxies from closing an idle stream.

One reader per process feeds every stream: while any stream is open, the hub reads the feed once
per tick (woken at once by the ``FeedSignal`` when this process wrote to it, else every poll
period) and hands each new event to every stream. A stream reading the feed itself cost one query
per stream per second: 200 idle streams kept 36 % of a core busy. Only a stream that starts
behind (``Last-Event-ID``) or falls behind (a slow client) reads the database on its own, until
it has caught up.

Every ``recheck_s`` the hub asks, in one question for all streams, which of the tokens that
opened them have been revoked since, and ends those streams: revoking a token also cuts off what
it is watching, whichever registry process revoked it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web

from device_registry.alerts.store import FeedEvent, OpsStore, matches
from device_registry.delivery.feed import FeedSignal
from device_registry.errors import StoreUnavailable
from gridwatch.ground.outage import Outage

logger = logging.getLogger(__name__)

PAGE = 500
"""Events per feed read."""

Revoked = Callable[[Collection[str]], Awaitable[set[str]]]
"""Which of these streams' keys (token digests) may no longer watch."""


def frame(event: FeedEvent) -> bytes:
    data = json.dumps(event.payload, separators=(",", ":"))
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {data}\n\n".encode()


class _Subscriber:
    """One stream's inbox. Bounded: a client that falls ``limit`` events behind is marked
    ``lagged`` and reads the database itself until it has caught up, so a slow client never
    holds the hub's memory."""

    def __init__(self, cursor: int, limit: int, key: str) -> None:
        self.cursor, self.limit, self.key = cursor, limit, key
        self.events: deque[FeedEvent] = deque()
        self.lagged = False
        self.revoked = False
        self.wake = asyncio.Event()

    def offer(self, batch: list[FeedEvent]) -> None:
        if self.lagged:
            return
        if len(self.events) + len(batch) > self.limit:
            self.events.clear()
            self.lagged = True
        else:
            self.events.extend(batch)
        self.wake.set()


class SseHub:
    """Serves the streams from one feed reader, and ends them all when the app shuts down
    (aiohttp would otherwise wait for them up to its shutdown timeout)."""

    def __init__(
        self, ops: OpsStore, signal: FeedSignal, heartbeat_s: float = 15.0,
        recheck_s: float = 5.0, backlog: int = 1000,
    ) -> None:  # fmt: skip
        self.ops, self.signal = ops, signal
        self.heartbeat_s, self.recheck_s, self.backlog = heartbeat_s, recheck_s, backlog
        self.cursor = 0
        """The newest seq the reader has handed out."""
        self.catch_ups = 0
        """How often a stream read the database itself (it started or fell behind)."""
        self._streams: set[asyncio.Task[object]] = set()
        self._subs: set[_Subscriber] = set()
        self._reader: asyncio.Task[None] | None = None
        self._warden: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()
        self.feed_outage = Outage(logger, "alert stream", "feed", "streams wait")
        self.token_outage = Outage(logger, "alert stream", "token check",
                                   "revoked tokens are cut off when it is back")  # fmt: skip

    @property
    def clients(self) -> int:
        return len(self._streams)

    async def close(self) -> None:
        for task in list(self._streams):
            task.cancel()
        for helper in (self._reader, self._warden):
            if helper is not None:
                helper.cancel()
                await asyncio.gather(helper, return_exceptions=True)

    async def stream(
        self, request: web.Request, district: str | None, category: str | None,
        start: int | None, key: str, revoked: Revoked,
    ) -> web.StreamResponse:  # fmt: skip
        # joined before the headers go out: a store that is down is a 503, not a broken stream
        sub = await self._join(start, key, revoked)
        try:
            resp = web.StreamResponse(headers={
                "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            })  # fmt: skip
            await resp.prepare(request)
            await resp.write(b": gridwatch alert stream\nretry: 2000\n\n")
            task = asyncio.current_task()
            assert task is not None
            self._streams.add(task)
            try:
                await self._pump(resp, sub, district, category)
            except (ConnectionResetError, asyncio.CancelledError):
                pass  # the client went away, or the server is stopping
            finally:
                self._streams.discard(task)
        finally:
            self._subs.discard(sub)
        return resp

    async def _join(self, start: int | None, key: str, revoked: Revoked) -> _Subscriber:
        async with self._starting:
            if self._reader is None or self._reader.done():
                self.cursor = await self.ops.last_seq()
            if start is not None and start > self.cursor:
                start = await self._resumable(start)
            # no await from here on: a reader or warden that found no stream would stop, and
            # the reader must not read past the cursor before this stream is in the set
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read(), name="sse-feed-reader")
            if self._warden is None or self._warden.done():
                self._warden = asyncio.create_task(self._watch(revoked), name="sse-token-warden")
            sub = _Subscriber(self.cursor if start is None else start, self.backlog, key)
            self._subs.add(sub)
            sub.lagged = start is not None and start < self.cursor
            return sub

    async def _resumable(self, start: int) -> int:
        """Where a client that saw ``start`` resumes. Past the feed's end, it saw another feed
        (the database was restored or replaced): waiting for the new one to pass ``start``
        would send it nothing for as long, so it starts at the end, as a new client does."""
        end = await self.ops.last_seq()
        if start <= end:  # another registry process served it; this reader is a tick behind
            return start
        logger.warning("a client resumed the alert stream after seq %d, past the feed's end %d "
                       "(a restored or new database?): it starts at the end", start, end)  # fmt: skip
        return end

    async def _read(self) -> None:
        """The one feed reader; it stops when the last stream has gone."""
        while self._subs:
            # the reader's outermost loop: streams wait, it tries again
            with self.feed_outage.guard(StoreUnavailable):
                batch = await self.ops.feed(self.cursor, PAGE)
            if self.feed_outage.down:
                await self.signal.wait()
                continue
            if batch:
                self.cursor = batch[-1].seq
                for sub in self._subs:
                    sub.offer(batch)
            if len(batch) < PAGE:
                await self.signal.wait()

    async def _watch(self, revoked: Revoked) -> None:
        """Ends the streams whose token was revoked; it stops when the last stream has gone."""
        while self._subs:
            await asyncio.sleep(self.recheck_s)  # a period, not a wait for something
            # the warden's outermost loop: it asks again next period
            with self.token_outage.guard(StoreUnavailable):
                gone = await revoked({sub.key for sub in self._subs})
            if self.token_outage.down:
                continue
            for sub in self._subs:
                if sub.key in gone:
                    sub.revoked = True
                    sub.wake.set()

    async def _pump(
        self, resp: web.StreamResponse, sub: _Subscriber, district: str | None,
        category: str | None,
    ) -> None:  # fmt: skip
        quiet_since = time.monotonic()
        while not sub.revoked:
            if sub.lagged:
                sub.lagged = False
                await self._catch_up(resp, sub, district, category)
            while sub.events:
                event = sub.events.popleft()
                if event.seq <= sub.cursor:  # read already while catching up
                    continue
                sub.cursor = event.seq
                if matches(event, district, category):
                    await resp.write(frame(event))
                    quiet_since = time.monotonic()
            now = time.monotonic()
            if now - quiet_since >= self.heartbeat_s:
                await resp.write(b": keep-alive\n\n")
                quiet_since = now
            sub.wake.clear()
            if sub.events or sub.lagged or sub.revoked:
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.heartbeat_s - (now - quiet_since)):
                    await sub.wake.wait()

    async def _catch_up(
        self, resp: web.StreamResponse, sub: _Subscriber, district: str | None,
        category: str | None,
    ) -> None:  # fmt: skip
        """Read the feed from the stream's own cursor until it reaches the hub's."""
        self.catch_ups += 1
        while True:
            batch = await self.ops.feed(sub.cursor, PAGE)
            for event in batch:
                sub.cursor = event.seq
                if matches(event, district, category):
                    await resp.write(frame(event))
            if len(batch) < PAGE:
                return
