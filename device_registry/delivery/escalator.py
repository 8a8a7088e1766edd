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

logger = logging.getLogger(__name__)


FEED_RETENTION_MS = 7 * 24 * 3600 * 1000
PRUNE_EVERY = 720  # escalation rounds (an hour at 5 s)


async def escalate_forever(
    ops: OpsStore, every_s: float = 5.0,
    clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> None:  # fmt: skip
    for round_no in itertools.count():
        try:
            done = await ops.escalate(clock())
            if round_no % PRUNE_EVERY == 0:
                await ops.prune_feed(clock() - FEED_RETENTION_MS)
        except StoreUnavailable as exc:
            logger.warning("escalation check skipped: %s", exc)
        else:
            for alert_id in done:
                logger.warning("alert %s is past its time limit: escalated", alert_id)
        await asyncio.sleep(every_s)
