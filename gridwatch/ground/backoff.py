"""The one backoff: how long to wait before the next attempt of anything that retries.

Jittered, capped exponential: attempt ``n`` (from 0) waits ``min(cap, first * 2**n)`` scaled by a
random factor in ``[1 - jitter, 1]``. The jitter spreads out the clients that lost the same broker
or database at the same moment, so they do not all come back in the same millisecond; the cap
keeps a long outage from growing the wait past what the caller can afford after the return (the
edge and the bridge want to be back within about a second). Pure: the random source is the only
thing injected, so the schedule is tested with a seeded ``random.Random``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

_MAX_DOUBLINGS = 64  # 2**64 times any sensible first delay is past every cap; no float overflow


@dataclass
class Backoff:
    first_s: float
    """The wait before the second attempt (the first one goes at once)."""
    cap_s: float
    """No wait is longer than this."""
    jitter: float = 0.5
    """Each wait is drawn from [(1 - jitter) * d, d]; 0 gives the bare schedule."""
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempt: int = 0
    """Failures since the last success."""

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.cap_s:
            raise ValueError(
                f"backoff: need 0 < first_s <= cap_s, got first_s={self.first_s}, "
                f"cap_s={self.cap_s}"
            )
        if not 0 <= self.jitter < 1:
            raise ValueError(f"backoff: jitter must be in [0, 1), got {self.jitter}")

    def delay(self, attempt: int) -> float:
        """The wait after failure number ``attempt`` (from 0); draws once from ``rng``."""
        bare = min(self.cap_s, self.first_s * 2.0 ** min(max(attempt, 0), _MAX_DOUBLINGS))
        return bare * self.rng.uniform(1.0 - self.jitter, 1.0)

    def next(self) -> float:
        """The wait after one more failure."""
        wait = self.delay(self.attempt)
        self.attempt += 1
        return wait

    def reset(self) -> None:
        """It worked: the next outage starts again from ``first_s``."""
        self.attempt = 0


__all__ = ["Backoff"]
