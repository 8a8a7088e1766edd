"""Per-device health counters, and the outage logging policy: the first failure of an outage
at ERROR, repeats at DEBUG, the recovery at INFO.

A change the centre should see at once (a bus down or back; a device that stops answering, goes
offline, answers again, or has answered ``RECOVERED_POLLS`` in a row after failing) is told to ``CHANGES``'s listeners: the edge then sends a health report
without waiting for its next period (``edge/app.py``). One per process: a gateway is one process,
and its drivers make their stats without knowing the app.

Besides the lifetime counters a device keeps its recent polls (``RECENT_POLLS``, none older than
``RECENT_S``): the centre judges read success on those, so a device that failed through a
one-minute bus outage and answers every poll since is healthy again within the window, not
"65 % succeed" for the rest of the gateway's uptime. ``consecutive_ok`` lets the centre tell a
device that has recovered (answering in a row since) from an intermittent one.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from gridwatch.ground.contract import (
    RECENT_POLLS,
    RECENT_S,
    RECOVERED_POLLS,
    BusHealth,
    DeviceHealth,
)

logger = logging.getLogger(__name__)

OFFLINE_AFTER = 3
"""Failed polls in a row after which the centre calls a device offline (``Policy.offline_failures``):
the report is sent at that failure too, not only at the first."""


class StateChanges:
    """Who wants to hear that the health of a bus or device changed. Listeners are called in the
    event loop's thread (the drivers are asyncio tasks) and must not block."""

    __slots__ = ("listeners",)

    def __init__(self) -> None:
        self.listeners: set[Callable[[], None]] = set()

    def changed(self) -> None:
        for listener in list(self.listeners):
            listener()


CHANGES = StateChanges()


class DeviceStats:
    __slots__ = (
        "clock", "consecutive_failures", "consecutive_ok", "device", "last_error", "last_failed",
        "last_ok", "polls_skipped", "reads_failed", "reads_ok", "recent", "response_ms",
    )  # fmt: skip

    def __init__(self, device: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.clock = clock
        self.recent: deque[tuple[float, bool]] = deque(maxlen=RECENT_POLLS)
        """(monotonic time, answered) of the recent polls, oldest first."""
        self.reads_ok = 0
        self.reads_failed = 0
        self.consecutive_failures = 0
        self.consecutive_ok = 0
        self.last_failed: int | None = None
        """Wall-clock epoch ms of the newest failed poll."""
        self.polls_skipped = 0
        self.response_ms: float | None = None
        self.last_ok: int | None = None
        self.last_error = ""

    def ok(self, ts_ms: int, response_ms: float) -> None:
        if self.consecutive_failures or self.last_ok is None:
            CHANGES.changed()  # answering (again, or for the first time)
        if self.consecutive_failures:
            logger.info(
                "%s: answering again after %d failed polls",
                self.device,
                self.consecutive_failures,
                extra={"device": self.device},
            )
        self.reads_ok += 1
        self.recent.append((self.clock(), True))
        self.consecutive_failures = 0
        self.consecutive_ok += 1
        if self.consecutive_ok == RECOVERED_POLLS and self.reads_failed:
            CHANGES.changed()  # recovered: no longer "failing reads" at the centre
        self.response_ms = response_ms
        self.last_ok = ts_ms
        self.last_error = ""

    def failed(self, error: str, *, attempted: bool = True) -> None:
        """Count a failed poll; ``attempted=False`` for ticks suppressed by backoff."""
        self.reads_failed += 1
        self.recent.append((self.clock(), False))
        self.consecutive_failures += 1
        self.consecutive_ok = 0
        self.last_failed = time.time_ns() // 1_000_000
        self.last_error = error
        if self.consecutive_failures in (1, OFFLINE_AFTER):
            CHANGES.changed()
        if not attempted:
            return
        if self.consecutive_failures == 1:
            logger.error("%s: %s", self.device, error, extra={"device": self.device})
        else:
            logger.debug("%s: still failing (%d): %s", self.device, self.consecutive_failures,
                         error, extra={"device": self.device})  # fmt: skip

    def recent_counts(self) -> tuple[int, int]:
        """(answered, failed) among the recent polls."""
        oldest = self.clock() - RECENT_S
        while self.recent and self.recent[0][0] < oldest:
            self.recent.popleft()
        ok = sum(answered for _, answered in self.recent)
        return ok, len(self.recent) - ok

    def snapshot(self) -> DeviceHealth:
        recent_ok, recent_failed = self.recent_counts()
        return DeviceHealth(
            device=self.device,
            online=self.consecutive_failures == 0 and self.last_ok is not None,
            reads_ok=self.reads_ok,
            reads_failed=self.reads_failed,
            consecutive_failures=self.consecutive_failures,
            response_ms=self.response_ms,
            last_ok=self.last_ok,
            polls_skipped=self.polls_skipped,
            recent_ok=recent_ok,
            recent_failed=recent_failed,
            consecutive_ok=self.consecutive_ok,
            last_failed=self.last_failed,
        )


class BusState:
    """Whether a bus itself can be reached: down from its first failed connection (the
    endpoint refuses, the serial port cannot be opened, the sensor broker is gone) until the next
    successful one. Logged by the transport; this only remembers it for the health report."""

    __slots__ = ("down_since", "error")

    def __init__(self) -> None:
        self.down_since: int | None = None
        self.error = ""

    def down(self, error: str) -> None:
        if self.down_since is None:
            self.down_since = time.time_ns() // 1_000_000
            CHANGES.changed()
        self.error = error

    def up(self) -> None:
        if self.down_since is not None:
            CHANGES.changed()
        self.down_since, self.error = None, ""

    def snapshot(self, bus: str, kind: str, address: str, devices: list[str]) -> BusHealth:
        return BusHealth(bus=bus, type=kind, address=address, up=self.down_since is None,
                         error=self.error[:200], down_since=self.down_since,
                         devices=devices)  # fmt: skip
