"""Waking the feed's readers: at once when this process wrote to the feed, otherwise by polling
(a bridge in another process writes to the same database)."""

from __future__ import annotations

import asyncio
import contextlib


class FeedSignal:
    def __init__(self, poll_s: float = 1.0) -> None:
        self.poll_s = poll_s
        self._event = asyncio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        """Until the next ``notify`` or the poll period, whichever comes first."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.poll_s):
                await self._event.wait()
