"""A store the bridge depends on (the registry, the time-series sink), as its calls meet it.

Three readers want to know how the calls go, and each was once kept in a dict of its own: the
health report (``Link``: last success, failures in a row, since when, the error's kind), the log
(``Outage``: one line when an outage starts, one when it ends) and the steps that wait for the
store (``failing``: set while the last call failed, so a step relays at once instead of waiting
``RELAY_AFTER_S``). One object per store keeps them from drifting apart: every call's outcome
goes to ``failed`` or ``ok``, which tell all three.
"""

from __future__ import annotations

import asyncio
import logging

from device_registry.health.centre import Link, LinkState
from gridwatch.ground.outage import Outage


class Watched:
    def __init__(self, logger: logging.Logger, name: str, meanwhile: str) -> None:
        """``meanwhile``: what the bridge does while the store is down, for the log."""
        self.name = name
        self.link = Link()
        self.outage = Outage(logger, "bridge", name, meanwhile)
        self.failing = asyncio.Event()
        """Set while the last call failed."""

    @property
    def state(self) -> LinkState:
        return self.link.state

    def failed(self, now: int, exc: BaseException) -> None:
        self.link.failed(now, exc)
        self.outage.failed(exc)
        self.failing.set()

    def ok(self, now: int) -> None:
        self.link.ok(now)
        self.outage.ok()
        self.failing.clear()


__all__ = ["Watched"]
