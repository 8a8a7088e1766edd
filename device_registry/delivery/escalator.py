"""The clock of the case workflow: every few seconds, file the alerts whose filing condition has
now held long enough, let sensors verify (and close) disposed cases or send them back, and urge
(督办) overdue cases; now and then, forget feed events older than the retention (subscribers read
the feed within seconds; a week covers any outage a webhook receiver should have).

A drill (``--escalation-scale``) shortens the workflow's times, so the clock looks more often
too: at the scale times its period, never more often than ``FASTEST_S``."""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable

from device_registry.alerts.store import OpsStore
from device_registry.errors import StoreUnavailable
from gridwatch.ground.outage import Outage

logger = logging.getLogger(__name__)


FEED_RETENTION_MS = 7 * 24 * 3600 * 1000
PRUNE_EVERY = 720  # rounds (an hour at 5 s)
FASTEST_S = 0.2


def escalation_outage() -> Outage:
    """The clock's view of the database; one per process, kept across lease changes, so that
    an outage that cost the lease is still seen to end."""
    return Outage(logger, "case clock", "registry database",
                  "no automatic filing, verification or urging meanwhile")  # fmt: skip


def period_s(every_s: float, scale: float) -> float:
    """The clock's period under a drill of ``scale`` (1 in service)."""
    return every_s if scale >= 1 else max(FASTEST_S, every_s * scale * 10)


async def escalate_forever(
    ops: OpsStore, every_s: float = 5.0,
    clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    outage: Outage | None = None,
) -> None:  # fmt: skip
    outage = outage or escalation_outage()
    every_s = period_s(every_s, ops.ops.scale)
    for round_no in itertools.count():
        done: list[tuple[str, str]] = []
        # the task's outermost loop: an outage is told once, a bug too, and the clock goes on
        with outage.guard(StoreUnavailable):
            done = await ops.tick(clock())
            if round_no % PRUNE_EVERY == 0:
                await ops.prune_feed(clock() - FEED_RETENTION_MS)
        for alert_id, moved in done:
            logger.info("case %s: %s", alert_id, moved)
        await asyncio.sleep(every_s)
