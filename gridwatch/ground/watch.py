"""Waiting for a state change without polling: the owner calls ``changed()``, waiters wake."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class Watch:
    def __init__(self) -> None:
        self._event = asyncio.Event()

    def changed(self) -> None:
        self._event.set()
        self._event = asyncio.Event()

    async def until(self, predicate: Callable[[], bool], within_s: float) -> None:
        """Return once ``predicate()`` holds; TimeoutError after ``within_s`` seconds."""
        async with asyncio.timeout(within_s):
            while not predicate():
                await self._event.wait()
