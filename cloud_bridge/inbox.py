"""A lane's received batches that its writer has not taken yet.

The lane receives in a task of its own, so that what arrives while a step waits (for the
registry, say) is seen at once: the bridge relays its alerts (``relay.py``) instead of leaving
them in the broker's queue behind the waiting step. The writer takes what has gathered as one
step, up to ``max_messages``, as it took it from the broker before. Memory is bounded by the
session's Receive Maximum: the broker sends no more while that many are unacknowledged.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence

from cloud_bridge.mqtt import Inbound


class Inbox:
    def __init__(self) -> None:
        self._batches: collections.deque[list[Inbound]] = collections.deque()
        self._added = asyncio.Event()

    def put(self, batch: list[Inbound]) -> None:
        self._batches.append(batch)
        self._added.set()

    def waiting(self) -> Sequence[list[Inbound]]:
        """What waits to be taken, oldest first (a copy)."""
        return list(self._batches)

    async def take(self, max_messages: int) -> list[Inbound]:
        """The oldest batch and those after it that fit within ``max_messages`` together."""
        while not self._batches:
            self._added.clear()
            await self._added.wait()
        out = list(self._batches.popleft())
        while self._batches and len(out) + len(self._batches[0]) <= max_messages:
            out += self._batches.popleft()
        return out
