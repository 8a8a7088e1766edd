"""Webhook delivery: each subscription reads the feed from its own cursor, in order.

A message is POSTed as the same JSON document the MQTT platform topics carry, signed with
HMAC-SHA256 over ``"<timestamp>.<body>"`` (headers ``X-Gridwatch-Timestamp``,
``X-Gridwatch-Signature: sha256=<hex>``), so a receiver checks both origin and freshness. A failed
POST (no 2xx, a network error, a timeout) is retried with the one backoff; after the last
attempt the message goes to the dead-letter list, from where an operator replays it through the
API, and the subscription moves on. The cursor moves only after a delivery or a dead letter is
recorded: a restart delivers again what was in flight (at-least-once; ``X-Gridwatch-Seq`` dedupes).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp

from device_registry.alerts.store import FeedEvent, OpsStore, matches
from device_registry.db.tables import Webhook
from device_registry.delivery.feed import FeedSignal
from gridwatch.ground.backoff import Backoff

logger = logging.getLogger(__name__)

SIGNATURE = "X-Gridwatch-Signature"
TIMESTAMP = "X-Gridwatch-Timestamp"


def body_of(event: FeedEvent) -> bytes:
    return json.dumps(event.payload, separators=(",", ":")).encode()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, now_s: float,
           tolerance_s: float = 300) -> bool:  # fmt: skip
    """What a receiver does: the signature matches and the timestamp is recent (no replays)."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now_s - ts) > tolerance_s:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how fast a failed POST is tried again: the one backoff of
    ``gridwatch.ground.backoff`` (after ``first_s``, doubling up to ``cap_s``, each wait jittered
    down by up to ``jitter``, so the subscriptions that failed on one receiver at once do not all
    come back at the same moment), ``attempts`` in all."""

    attempts: int = 6
    first_s: float = 1.0
    cap_s: float = 60.0
    jitter: float = 0.5
    timeout_s: float = 10.0

    def waits(self) -> Backoff:
        """A fresh schedule for one message's attempts."""
        return Backoff(self.first_s, self.cap_s, jitter=self.jitter)


class Failed(Exception):
    """One POST that did not succeed."""


async def post(session: aiohttp.ClientSession, hook: Webhook, event: FeedEvent,
               timeout_s: float) -> None:  # fmt: skip
    body = body_of(event)
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json", TIMESTAMP: str(ts), SIGNATURE: sign(hook.secret, ts, body),
        "X-Gridwatch-Event": event.kind, "X-Gridwatch-Seq": str(event.seq),
    }  # fmt: skip
    try:
        async with session.post(hook.url, data=body, headers=headers,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:  # fmt: skip
            if not 200 <= r.status < 300:
                raise Failed(f"HTTP {r.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Failed(f"{type(exc).__name__}: {exc}") from exc


class WebhookDispatcher:
    def __init__(
        self, ops: OpsStore, signal: FeedSignal, session: aiohttp.ClientSession,
        retry: RetryPolicy | None = None, clock: Callable[[], int] = lambda: time.time_ns() // 10**6,
    ) -> None:  # fmt: skip
        self.ops, self.signal, self.session = ops, signal, session
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.delivered = 0
        self.failed_attempts = 0
        self.dead = 0

    async def run(self) -> None:
        """One worker per active subscription; new and deleted subscriptions are picked up."""
        workers: dict[int, asyncio.Task[None]] = {}
        try:
            while True:
                hooks = {h.id: h for h in await self._hooks()}
                for gone in set(workers) - set(hooks):
                    workers.pop(gone).cancel()
                for hid in set(hooks) - set(workers):
                    workers[hid] = asyncio.create_task(self._worker(hid), name=f"webhook-{hid}")
                await self.signal.wait()
        finally:
            for task in workers.values():
                task.cancel()
            await asyncio.gather(*workers.values(), return_exceptions=True)

    async def _hooks(self) -> list[Webhook]:
        try:
            return await self.ops.webhooks(active_only=True)
        except Exception:  # the loop outlives a database outage; the next poll tries again
            logger.exception("cannot list webhook subscriptions")
            return []

    async def _worker(self, hook_id: int) -> None:
        while True:
            try:
                await self._drain(hook_id)
            except asyncio.CancelledError:
                raise
            except Exception:  # the task's outermost loop: log, wait, go on from the cursor
                logger.exception("webhook %d delivery failed", hook_id)
            await self.signal.wait()

    async def _drain(self, hook_id: int) -> None:
        while True:
            hook = next((h for h in await self.ops.webhooks() if h.id == hook_id), None)
            if hook is None:
                return
            events = await self.ops.feed(hook.cursor, limit=100)
            if not events:
                return
            for event in events:
                if matches(event, hook.district, hook.category):
                    await self._deliver(hook, event)
                else:
                    await self.ops.advance(hook.id, event.seq)

    async def _deliver(self, hook: Webhook, event: FeedEvent) -> None:
        error, waits = "", self.retry.waits()
        for attempt in range(1, self.retry.attempts + 1):
            try:
                await post(self.session, hook, event, self.retry.timeout_s)
            except Failed as exc:
                error = str(exc)
                self.failed_attempts += 1
                logger.log(logging.WARNING if attempt == 1 else logging.DEBUG,
                           "webhook %d (%s) seq %d attempt %d: %s", hook.id, hook.url, event.seq,
                           attempt, error)  # fmt: skip
                if attempt < self.retry.attempts:
                    await asyncio.sleep(waits.next())
                continue
            self.delivered += 1
            await self.ops.advance(hook.id, event.seq)
            return
        self.dead += 1
        logger.error("webhook %d: seq %d dead-lettered after %d attempts: %s", hook.id,
                     event.seq, self.retry.attempts, error)  # fmt: skip
        await self.ops.dead_letter(hook.id, event.seq, self.retry.attempts, error, self.clock())

    async def replay(self, dead_id: int) -> str | None:
        """One more attempt for a dead letter; None when delivered, else the error."""
        _, hook, event = await self.ops.dead_letter_row(dead_id)
        try:
            await post(self.session, hook, event, self.retry.timeout_s)
        except Failed as exc:
            await self.ops.replayed(dead_id, self.clock(), str(exc))
            return str(exc)
        await self.ops.replayed(dead_id, self.clock(), None)
        return None
