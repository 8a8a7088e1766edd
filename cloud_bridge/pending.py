"""A lane's steps that are written but not yet committed to the registry, merged into one
transaction.

The time-series write happens per step; the registry transaction (last values, last seen, ids)
can cover several steps: for up to ``window_s`` seconds or ``max_messages`` messages, a device
point's last value is written once instead of once per reading. The messages of all merged steps
are acknowledged after that transaction, so delivery stays at-least-once; the window only delays
acknowledgements and what the registry shows (bounded by ``window_s``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from cloud_bridge.core import Plan, Stats
from cloud_bridge.decode import Message
from cloud_bridge.mqtt import Inbound
from device_registry import Changes


@dataclass
class Group:
    changes: Changes
    batches: list[Sequence[Inbound]] = field(default_factory=list)
    stats: Stats = field(default_factory=Stats)
    """The lane's counts after the group's last step: what ``Bridge.until`` sees once committed."""
    messages: int = 0
    accepted: list[Message] = field(default_factory=list)
    """What ``changes`` was built from: to find a message the registry refuses."""
    delivered: list[tuple[str, str, int]] = field(default_factory=list)
    """(gateway, stream, seq) of every message of the group: acknowledged to the gateways once
    the group commits."""


class Pending:
    def __init__(self, window_s: float, max_messages: int) -> None:
        self.window_s = window_s
        self.max_messages = max_messages
        self.unfinished: set[str] = set()
        """Ids written by steps whose registry transaction has not committed (dedupe)."""
        self._group: Group | None = None
        self._since = 0.0
        self._added = asyncio.Event()
        self._full = asyncio.Event()
        self._closed = False

    def close(self) -> None:
        """No more steps: ``take`` hands out what is left at once, then None."""
        self._closed = True
        self._added.set()
        self._full.set()

    def add(self, batch: Sequence[Inbound], plan: Plan, stats: Stats) -> None:
        if self._group is None:
            self._group = Group(Changes(now=plan.changes.now))
            self._since = time.monotonic()
        g = self._group
        g.changes.merge(plan.changes)
        g.batches.append(batch)
        g.accepted += plan.accepted
        g.delivered += plan.delivered
        g.stats = stats
        g.messages += len(batch)
        self.unfinished.update(plan.changes.seen_ids)
        self._added.set()
        if g.messages >= self.max_messages:
            self._full.set()

    async def take(self) -> Group | None:
        """The next group to commit: once the window since its first step has passed, or it is
        full; at once when the window is 0 or the lane is closing (then None when empty)."""
        while self._group is None:
            if self._closed:
                return None
            self._added.clear()
            await self._added.wait()
        remaining = self._since + self.window_s - time.monotonic()
        if remaining > 0 and not self._full.is_set():
            try:
                async with asyncio.timeout(remaining):
                    await self._full.wait()
            except TimeoutError:
                pass
        group, self._group = self._group, None
        self._full.clear()
        assert group is not None
        return group

    def committed(self, group: Group) -> None:
        self.unfinished.difference_update(group.changes.seen_ids)
