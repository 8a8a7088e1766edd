"""Per-device health counters, and the outage logging policy: the first failure of an outage
at ERROR, repeats at DEBUG, the recovery at INFO.

Besides the lifetime counters a device keeps its recent polls (``RECENT_POLLS``, none older than
``RECENT_S``): the centre judges read success on those, so a device that failed through a
one-minute bus outage and answers every poll since is healthy again within the window, not
"65 % succeed" for the rest of the gateway's uptime.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from gridwatch.ground.contract import RECENT_POLLS, RECENT_S, BusHealth, DeviceHealth

logger = logging.getLogger(__name__)


class DeviceStats:
    __slots__ = (
        "clock", "consecutive_failures", "device", "last_error", "last_ok", "polls_skipped",
        "reads_failed", "reads_ok", "recent", "response_ms",
    )  # fmt: skip

    def __init__(self, device: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.device = device
        self.clock = clock
        self.recent: deque[tuple[float, bool]] = deque(maxlen=RECENT_POLLS)
        """(monotonic time, answered) of the recent polls, oldest first."""
        self.reads_ok = 0
        self.reads_failed = 0
        self.consecutive_failures = 0
        self.polls_skipped = 0
        self.response_ms: float | None = None
        self.last_ok: int | None = None
        self.last_error = ""

    def ok(self, ts_ms: int, response_ms: float) -> None:
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
        self.response_ms = response_ms
        self.last_ok = ts_ms
        self.last_error = ""

    def failed(self, error: str, *, attempted: bool = True) -> None:
        """Count a failed poll; ``attempted=False`` for ticks suppressed by backoff."""
        self.reads_failed += 1
        self.recent.append((self.clock(), False))
        self.consecutive_failures += 1
        self.last_error = error
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
        self.error = error

    def up(self) -> None:
        self.down_since, self.error = None, ""

    def snapshot(self, bus: str, kind: str, address: str, devices: list[str]) -> BusHealth:
        return BusHealth(bus=bus, type=kind, address=address, up=self.down_since is None,
                         error=self.error[:200], down_since=self.down_since,
                         devices=devices)  # fmt: skip
