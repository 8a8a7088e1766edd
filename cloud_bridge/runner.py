"""Running a process's services: one TaskGroup, started in order, stopped in reverse. systemd
hears READY=1 once every service is ready and STOPPING=1 when the stop begins; its watchdog is
pinged while the event loop turns (``gridwatch.ground.sdnotify``).

A service is a coroutine function that sets its ``ready`` event once it is up and then runs
until cancelled. Composition roots (``gridwatch central run``, ``bridge run``) build theirs and
hand them to ``run_services`` with the event that SIGTERM/SIGINT set.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence

from gridwatch.ground import sdnotify

logger = logging.getLogger(__name__)

Service = Callable[[asyncio.Event], Awaitable[None]]


def tune_runtime() -> None:
    """Collect cyclic garbage less often, never scan what start-up created, and hand the GIL
    between threads more often.

    The bridge allocates a pydantic object per reading (100,000s a second) that reference counting
    frees; with the default threshold (700) the cyclic collector runs thousands of times a second
    and scans every long-lived object each time it reaches the older generations: it took half of
    the bridge's CPU in bench/bridge_bench.py. Big batches are decoded in a worker thread; with
    the default 5 ms switch interval every hop of the event loop (an alert's registry statement,
    a PUBACK) waited that long for the GIL.
    """
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    sys.setswitchinterval(0.0005)


def stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


async def run_services(services: Sequence[tuple[str, Service]], stop: asyncio.Event) -> None:
    """Start each service once the previous one is ready; on ``stop`` cancel them last-first."""
    async with asyncio.TaskGroup() as tg:
        started: list[asyncio.Task[None]] = []
        for name, service in services:
            ready = asyncio.Event()
            task = tg.create_task(_run(service, ready), name=name)
            started.append(task)
            waiter = asyncio.create_task(ready.wait())
            try:
                await asyncio.wait([waiter, task], return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiter.cancel()
            if task.done():  # failed while starting: the TaskGroup re-raises its error
                return
            logger.debug("service %s ready", name)
        sdnotify.notify(READY=1, STATUS=f"serving: {', '.join(n for n, _ in services)}")
        watchdog = tg.create_task(sdnotify.keep_alive(), name="watchdog")
        await stop.wait()
        sdnotify.notify(STOPPING=1, STATUS="stopping")
        watchdog.cancel()
        logger.info("stopping: %s", ", ".join(t.get_name() for t in reversed(started)))
        for task in reversed(started):
            task.cancel()
            await asyncio.wait([task])


async def _run(service: Service, ready: asyncio.Event) -> None:
    await service(ready)


async def forever() -> None:
    """What a service awaits once it is up: cancellation is its only way out."""
    await asyncio.Future()
