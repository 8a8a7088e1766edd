"""Per-device health counters, and the outage logging policy: the first failure of an outage
at ERROR, repeats at DEBUG, the recovery at INFO."""

from __future__ import annotations

import logging

from gridwatch.ground.contract import DeviceHealth

logger = logging.getLogger(__name__)


class DeviceStats:
    __slots__ = (
        "consecutive_failures", "device", "last_error", "last_ok", "polls_skipped",
        "reads_failed", "reads_ok", "response_ms",
    )  # fmt: skip

    def __init__(self, device: str) -> None:
        self.device = device
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
        self.consecutive_failures = 0
        self.response_ms = response_ms
        self.last_ok = ts_ms
        self.last_error = ""

    def failed(self, error: str, *, attempted: bool = True) -> None:
        """Count a failed poll; ``attempted=False`` for ticks suppressed by backoff."""
        self.reads_failed += 1
        self.consecutive_failures += 1
        self.last_error = error
        if not attempted:
            return
        if self.consecutive_failures == 1:
            logger.error("%s: %s", self.device, error, extra={"device": self.device})
        else:
            logger.debug("%s: still failing (%d): %s", self.device, self.consecutive_failures,
                         error, extra={"device": self.device})  # fmt: skip

    def snapshot(self) -> DeviceHealth:
        return DeviceHealth(
            device=self.device,
            online=self.consecutive_failures == 0 and self.last_ok is not None,
            reads_ok=self.reads_ok,
            reads_failed=self.reads_failed,
            consecutive_failures=self.consecutive_failures,
            response_ms=self.response_ms,
            last_ok=self.last_ok,
            polls_skipped=self.polls_skipped,
        )
