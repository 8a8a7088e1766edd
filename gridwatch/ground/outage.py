"""The one way a loop logs an outage of what it depends on (a database, a store, a broker).

A loop that polls a dependency every second must not write a line (or a traceback) every second
while the dependency is down: 20 s of PostgreSQL restart made 1,100 log lines of the webhook
lister alone, and the one line that mattered, when it started, scrolled away. So, as Home
Assistant's modbus ``_log_error`` does: the first failure of an outage at ERROR, the repeats at
DEBUG, the end at INFO with how long it lasted and how many attempts failed. Each line is one
line: a driver's message that spans lines (SQLAlchemy appends the statement) is folded, and cut.

A failure the caller knows to be a bug rather than an outage (``bug=True``) carries its
traceback, at ERROR once per outage (also when the outage began as a plain one), not once per
attempt.

Pure but for the logger and the clock, which are given: ``Outage(logger, "webhook lister",
"registry database")``; ``failed(exc)`` on each failure, ``ok()`` on each success, or a loop's
attempt inside ``with outage.guard(StoreUnavailable):``, after which ``outage.down`` says whether
it failed. Keep one ``Outage`` per component and dependency for the life of the process (not per
attempt or per task), so the end of an outage is told even when the task was restarted meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

_CUT = 400  # characters of an error's message in a log line: enough for a driver's own words


def one_line(exc: BaseException | str) -> str:
    """``exc``'s message folded onto one line and cut to a readable length."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= _CUT else text[: _CUT - 3] + "..."


class Outage:
    """One component's view of one dependency: up, or down since a given moment."""

    def __init__(
        self, logger: logging.Logger, component: str, dependency: str, meanwhile: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        """``meanwhile``: what the component does while it waits, for whoever reads the line
        ("messages stay unacknowledged")."""
        self.logger, self.component, self.dependency = logger, component, dependency
        self.meanwhile, self.clock = meanwhile, clock
        self.since: float | None = None
        """When the outage began (``clock`` time); None while the dependency works."""
        self.failures = 0
        """Failed attempts in the current outage."""
        self._told_bug = False

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, exc: BaseException | str, bug: bool = False) -> None:
        """One failed attempt; ``bug``: not an outage but our fault, logged with its traceback
        (on the first failure only, like the rest)."""
        first = self.since is None
        if first:
            self.since = self.clock()
        # a bug met during an outage is still told, once: it would outlive the outage unseen
        loud = first or (bug and not self._told_bug)
        self._told_bug = self._told_bug or bug
        self.failures += 1
        self.logger.log(
            logging.ERROR if loud else logging.DEBUG,
            "%s: %s %s%s: %s%s", self.component, self.dependency,
            "failed" if bug else "unavailable", f", {self.meanwhile}" if self.meanwhile else "",
            one_line(exc), "" if first else f" (attempt {self.failures})",
            exc_info=exc if bug and loud and isinstance(exc, BaseException) else None,
        )  # fmt: skip

    @contextlib.contextmanager
    def guard(
        self,
        transient: type[BaseException] | tuple[type[BaseException], ...],
        catch: type[BaseException] | tuple[type[BaseException], ...] = Exception,
    ) -> Iterator[None]:
        """Run one attempt: an error of ``catch`` is logged (``transient`` ones as the outage
        they are, the others as bugs, with their traceback) and swallowed; no error ends the
        outage. For a task's outermost loop, where nothing may end the task."""
        try:
            yield
        except catch as exc:
            self.failed(exc, bug=not isinstance(exc, transient))
        else:
            self.ok()

    def ok(self) -> None:
        """One attempt that worked: ends the outage, if there was one, with one INFO line."""
        if self.since is None:
            return
        lasted = self.clock() - self.since
        self.logger.info("%s: %s is back after %.1f s (%d failed attempt%s)", self.component,
                         self.dependency, lasted, self.failures,
                         "" if self.failures == 1 else "s")  # fmt: skip
        self.since, self.failures, self._told_bug = None, 0, False


__all__ = ["Outage", "one_line"]
