"""A lane's received batches that its writer has not taken yet, and where they wait.

The lane receives in a task of its own, so that what arrives while a step waits (for the
registry, say) is seen at once: the bridge relays its alerts (``relay.py``) instead of leaving
them in the broker's queue behind the waiting step. The writer takes what has gathered as one
step, up to ``max_messages``, as it took it from the broker before.

Batches wait in memory (bounded by the session's Receive Maximum: the broker sends no more while
that many are unacknowledged) or, while the events lane waits for the registry, in its durable
spool (``spool.py``), acknowledged to the broker. The writer takes them in the order they came:
what waits in memory first (it came before the lane began to spool: nothing is kept in memory
while it spools), then the spool, oldest first; the lane spools until its writer has taken
everything the spool holds, so nothing newer overtakes it.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence

from cloud_bridge.mqtt import Inbound
from cloud_bridge.spool import SPOOL_MAX, Spool, Spooled


class Inbox:
    def __init__(self, spool: Spool | None = None, lane: str = "", last: int = 0) -> None:
        """``last``: the last row the spool holds for ``lane`` (from an earlier run: taken
        first)."""
        self._batches: collections.deque[list[Inbound]] = collections.deque()
        self._added = asyncio.Event()
        self._spool, self._lane = spool, lane
        self._last = last  # the last row held
        self._taken = 0  # the last row taken (a new lane session takes every row again)
        self._holding = 0
        self._room = asyncio.Event()
        self._room.set()
        self._turn = asyncio.Lock()  # one write to the spool at a time: rows in arrival order

    @property
    def spooling(self) -> bool:
        """The spool holds what the writer has not taken: what comes next goes there too."""
        return self._holding > 0 or self._last > self._taken

    def put(self, batch: list[Inbound]) -> None:
        self._batches.append(batch)
        self._added.set()

    async def hold(self, batch: list[Inbound]) -> None:
        """Into the spool, on disk when this returns (then the broker may forget it). Waits
        while the spool is full (``SPOOL_MAX``): the broker keeps the rest meanwhile."""
        assert self._spool is not None
        await self._room.wait()
        self._holding += 1
        try:
            async with self._turn:
                self._held(await self._spool.hold(self._lane, batch))
        finally:
            self._holding -= 1

    def _held(self, last: int) -> None:
        self._last = max(self._last, last)
        if self._last - self._taken >= SPOOL_MAX:
            self._room.clear()
        self._added.set()

    async def spill(self, batch: list[Inbound]) -> tuple[list[Inbound], list[list[Inbound]]]:
        """The writer's ``batch`` (as taken) and what waits in memory (to be taken), into the
        spool: the broker counts what the lane holds unacknowledged against its Receive Maximum,
        and sends no more until it is acknowledged. Returns ``batch`` as held (``Spooled``:
        its rows are forgotten when its step commits) and the batches moved from memory (to
        acknowledge to the broker with ``batch``)."""
        assert self._spool is not None
        async with self._turn:  # taken without a pause: nothing is held before these
            moved = list(self._batches)
            last = await self._spool.hold(self._lane, batch)
            rows = range(last - len(batch) + 1, last + 1)  # one transaction: consecutive
            spooled: list[Inbound] = [
                Spooled(m.topic, m.payload, 0, 0, row) for m, row in zip(batch, rows, strict=True)
            ]
            self._taken = last
            if moved:
                last = await self._spool.hold(self._lane, [m for b in moved for m in b])
            self._batches.clear()
            self._held(last)
        return spooled, moved

    def waiting(self) -> Sequence[list[Inbound]]:
        """What waits in memory, oldest first (a copy)."""
        return list(self._batches)

    async def take(self, max_messages: int) -> list[Inbound]:
        """The oldest batch and those after it that fit within ``max_messages`` together."""
        while True:
            if self._batches:
                out = list(self._batches.popleft())
                while self._batches and len(out) + len(self._batches[0]) <= max_messages:
                    out += self._batches.popleft()
                return out
            if self._spool is not None and self._last > self._taken:
                held = await self._spool.after(self._lane, self._taken, max_messages)
                if held:
                    self._taken = held[-1].row
                    if self._last - self._taken < SPOOL_MAX:
                        self._room.set()
                    return list(held)
                self._taken = self._last  # forgotten meanwhile (committed by an earlier session)
                continue
            self._added.clear()
            await self._added.wait()
