"""The clock of the alert lifecycle: every few seconds, escalate what went past its time limit."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from device_registry.errors import StoreUnavailable
from device_registry.opsstore import OpsStore

logger = logging.getLogger(__name__)


async def escalate_forever(
    ops: OpsStore, every_s: float = 5.0,
    clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
) -> None:  # fmt: skip
    while True:
        try:
            done = await ops.escalate(clock())
        except StoreUnavailable as exc:
            logger.warning("escalation check skipped: %s", exc)
        else:
            for alert_id in done:
                logger.warning("alert %s is past its time limit: escalated", alert_id)
        await asyncio.sleep(every_s)
