"""What the API's HTTP server allows a client, and how much a hostile one can make it log.

aiohttp 3.14 has no request-header timeout of its own, but its keep-alive timer runs from the
moment a connection opens and closes a connection that has not completed a request by then: set
short (the default is an hour), it is the slow-client timeout too. It never cuts a request being
handled (a long SSE stream, a big import). aiohttp has no cap on concurrent connections either;
with slow clients cut after ``keepalive_s``, what one can hold open is bounded by the rate it can
open them, and the listen backlog bounds what waits to be accepted.

aiohttp logs every malformed or aborted request at ERROR with its traceback: 1,100 hostile
connections wrote 25 MB of log in 20 s. ``LogBudget`` lets the first few per minute through
and counts the rest, so an attack is seen without the log becoming one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

CONNECTION_LOG = logging.getLogger("device_registry.http.connections")
"""The logger the server's connection-level errors go to (instead of ``aiohttp.server``)."""


@dataclass(frozen=True)
class ServerLimits:
    keepalive_s: float = 15.0
    """An idle connection, or one that has not sent a whole request head, is closed after this."""
    shutdown_s: float = 5.0
    """On stop, requests still running get this long to finish, then are cancelled (and get as
    long again to clean up): a big import must not hold up a SIGTERM."""
    client_max_size: int = 1024**2
    """Body limit of every endpoint but the CSV import, which reads its own (16 MiB)."""
    backlog: int = 512
    """Connections the kernel queues for accepting."""


class Budget:
    """At most ``burst`` events per ``window_s``; pure (time is an argument)."""

    def __init__(self, burst: int, window_s: float) -> None:
        self.burst, self.window_s = burst, window_s
        self._start: float | None = None
        self._used = 0
        self._dropped = 0

    def take(self, now: float) -> tuple[bool, int]:
        """Whether this event may pass, and how many were dropped in the window that ended
        (reported once, with the first event of the next window)."""
        ended = 0
        if self._start is None or now - self._start >= self.window_s:
            ended, self._start, self._used, self._dropped = self._dropped, now, 0, 0
        if self._used < self.burst:
            self._used += 1
            return True, ended
        self._dropped += 1
        return False, ended


class LogBudget(logging.Filter):
    """Passes the first ``burst`` records per window; says how many it held back once the next
    window opens."""

    def __init__(
        self, burst: int = 5, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.budget, self.clock = Budget(burst, window_s), clock

    def filter(self, record: logging.LogRecord) -> bool:
        allowed, dropped = self.budget.take(self.clock())
        if dropped:
            logger.warning("%d more connection errors were not logged in the %.0f s before",
                           dropped, self.budget.window_s)  # fmt: skip
        return allowed


if not any(isinstance(f, LogBudget) for f in CONNECTION_LOG.filters):  # once per process
    CONNECTION_LOG.addFilter(LogBudget())
