"""When each device is polled: fixed ticks, phase offsets, overlap guard and backoff.

Pure: every method takes ``now`` (monotonic seconds) and the driver does the sleeping.
Ticks are ``first + k * interval``, so a slow poll never makes the schedule drift, and ticks
that pass while a poll still runs are skipped and counted, never queued: when the field cannot
keep up the gateway sheds load visibly instead of building a backlog.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from gridwatch.ground.backoff import Backoff


def phase_offsets(intervals: Sequence[float]) -> list[float]:
    """Spread devices over their intervals (device i of n starts i/n of an interval late),
    so a hundred devices on one bus don't fire in the same millisecond."""
    n = len(intervals)
    return [iv * i / n for i, iv in enumerate(intervals)]


@dataclass(slots=True)
class Ticker:
    """Due time of a device's next poll."""

    interval: float
    due: float

    def advance(self, now: float) -> int:
        """Move to the first tick after ``now``; return how many ticks were missed because
        the poll for the current tick was still running when they came due."""
        nxt = self.due + self.interval
        missed = 0
        if nxt <= now:
            missed = math.floor((now - nxt) / self.interval) + 1
            nxt += missed * self.interval
        self.due = nxt
        return missed


REPOLL_MAX_S = 10.0
"""The longest any backoff keeps a device or a bus from being asked again: a bus (a TCP endpoint,
a serial port) that cannot be opened is tried again after 0.25 s, doubling, at most this long
(jittered down to half); a device that stops answering on a bus that works is held after 2 failed
polls for its interval, doubling, at most this long (or its interval, if longer). So a bus that
comes back is polled again within ``REPOLL_MAX_S`` plus one interval (docs/edge.md). Why 10 s:
the one timeout per hold that a dead device costs the others on a shared serial line stays
under a tenth of the line's time, and an installer who plugs a cable back sees readings within
a few seconds of looking."""


@dataclass(slots=True)
class DeviceHold:
    """After ``after`` consecutive failures, stop asking the device for a growing while
    (base, 2x base, 4x ... up to max_s). Ticks in between report COMM_ERROR without touching
    the wire, so a dead device costs its neighbours one timeout per backoff period, not one
    per tick. The waits are the one backoff's (``gridwatch.ground.backoff``) without jitter: a
    hold ends at the device's next tick anyway, and the phase offsets already spread devices out."""

    base_s: float
    max_s: float
    after: int = 2
    failures: int = 0
    retry_at: float = 0.0
    waits: Backoff = field(init=False)

    def __post_init__(self) -> None:
        # built (and its schedule checked) once, not on every failed poll of a dead device
        self.waits = Backoff(self.base_s, self.max_s, jitter=0.0)

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.failures >= self.after:
            self.retry_at = now + self.waits.delay(self.failures - self.after)

    def succeeded(self) -> None:
        self.failures = 0
        self.retry_at = 0.0

    def holds(self, now: float) -> bool:
        return now < self.retry_at
