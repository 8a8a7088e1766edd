"""The clock of the alert lifecycle: every few seconds, escalate what went past its time limit;
now and then, forget feed events older than the retention (subscribers read the feed within
seconds; a week covers any outage a webhook receiver should have)."""

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
PRUNE_EVERY = 720  # escalation rounds (an hour at 5 s)


def escalation_outage() -> Outage:
    """The clock's view of the database; one per process, kept across lease changes, so that
    an outage that cost the lease is still seen to end."""
    return Outage(logger, "escalation clock", "registry database", "no escalation meanwhile")


async def escalate_forever(
    ops: OpsStore, every_s: float = 5.0,
    clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    outage: Outage | None = None,
) -> None:  # fmt: skip
    outage = outage or escalation_outage()
    for round_no in itertools.count():
        done: list[str] = []
        # the task's outermost loop: an outage is told once, a bug too, and the clock goes on
        with outage.guard(StoreUnavailable):
            done = await ops.escalate(clock())
            if round_no % PRUNE_EVERY == 0:
                await ops.prune_feed(clock() - FEED_RETENTION_MS)
        for alert_id in done:
            logger.warning("alert %s is past its time limit: escalated", alert_id)
        await asyncio.sleep(every_s)
