"""Webhook delivery: each subscription reads the feed from its own cursor, in order.

A message is POSTed as the same JSON document the MQTT platform topics carry, signed with
HMAC-SHA256 over ``"<timestamp>.<body>"`` (headers ``X-Gridwatch-Timestamp``,
``X-Gridwatch-Signature: sha256=<hex>``), so a receiver checks both origin and freshness. A failed
POST (no 2xx, a network error, a timeout) is retried with the one backoff; after the last
attempt the message goes to the dead-letter list, from where an operator replays it through the
API, and the subscription moves on. The cursor moves only after a delivery or a dead letter is
recorded: a restart delivers again what was in flight (at-least-once; ``X-Gridwatch-Seq`` dedupes).

Secrets at rest (``SecretBox``): signing needs the secret itself, so it cannot be hashed like an
API token; it is encrypted with Fernet under ``GRIDWATCH_SECRET_KEY`` (a comma-separated list:
the first key seals, every key opens, so a key is rotated by putting the new one first). What is
sealed is the HMAC key the secret stands for (RFC 2104: a key longer than the 64-byte block is
hashed first), at most 64 bytes, so the sealed form always fits the existing 200-character
column: no migration. Rows stored in plain text (before this, or while no key was set) are read
as they are and sealed when delivery starts with a key; without a key secrets stay plain and the
registry says so once, at WARNING.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from sqlalchemy import select

from device_registry.alerts.store import FeedEvent, OpsStore, matches
from device_registry.db.tables import Webhook
from device_registry.delivery.feed import FeedSignal
from device_registry.errors import RegistryError, StoreUnavailable
from gridwatch.ground.backoff import Backoff
from gridwatch.ground.outage import Outage

logger = logging.getLogger(__name__)

SIGNATURE = "X-Gridwatch-Signature"
TIMESTAMP = "X-Gridwatch-Timestamp"
SECRET_KEY_ENV = "GRIDWATCH_SECRET_KEY"
SEALED = "fernet:v1:"
"""The prefix of a sealed secret in the ``webhooks.secret`` column; anything else is plain text."""
_HMAC_BLOCK = 64  # bytes, SHA-256's block size


class SecretUnreadable(Exception):
    """A stored secret cannot be opened (no key, or not one of the keys it was sealed with)."""


def hmac_key(secret: str | bytes) -> bytes:
    """The key HMAC-SHA256 really uses for ``secret``: signatures are the same either way."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hashlib.sha256(raw).digest() if len(raw) > _HMAC_BLOCK else raw


class SecretBox:
    """Seals webhook secrets for the database and opens them for signing."""

    def __init__(self, keys: list[str]) -> None:
        """``keys``: Fernet keys (``Fernet.generate_key()``), the sealing one first; none: plain."""
        try:
            fernets = [Fernet(k) for k in keys]
        except ValueError as exc:
            raise RegistryError(
                f"{SECRET_KEY_ENV} must be Fernet keys (32 url-safe base64-encoded bytes, e.g. "
                "from `python -c 'from cryptography.fernet import Fernet; "
                f"print(Fernet.generate_key().decode())'`), comma-separated: {exc}"
            ) from None
        self._first = fernets[0] if fernets else None
        self._fernet = MultiFernet(fernets) if fernets else None

    @classmethod
    def from_env(cls) -> SecretBox:
        keys = [k.strip() for k in os.environ.get(SECRET_KEY_ENV, "").split(",") if k.strip()]
        if not keys:
            logger.warning("%s is not set: webhook secrets are kept in plain text in the "
                           "registry database (see docs/security.md)", SECRET_KEY_ENV)  # fmt: skip
        return cls(keys)

    def seal(self, secret: str) -> str:
        """What goes into the database."""
        if self._first is None:
            return secret
        return SEALED + self._first.encrypt(hmac_key(secret)).decode()

    def open(self, stored: str) -> bytes:
        """The HMAC key for signing, from what the database holds."""
        if not stored.startswith(SEALED):
            return hmac_key(stored)
        if self._fernet is None:
            raise SecretUnreadable(f"the secret is encrypted and {SECRET_KEY_ENV} is not set")
        try:
            return self._fernet.decrypt(stored.removeprefix(SEALED).encode())
        except InvalidToken:
            raise SecretUnreadable(
                f"the secret was encrypted with a key that is not in {SECRET_KEY_ENV}"
            ) from None

    def resealed(self, stored: str) -> str | None:
        """The stored form under the first key, when ``stored`` is not that already (None);
        ``SecretUnreadable`` when it cannot be opened at all."""
        key = self.open(stored)
        if self._first is None:
            return None
        if stored.startswith(SEALED):
            try:
                self._first.decrypt(stored.removeprefix(SEALED).encode())
                return None
            except InvalidToken:
                pass  # sealed under an older key
        return SEALED + self._first.encrypt(key).decode()


def body_of(event: FeedEvent) -> bytes:
    return json.dumps(event.payload, separators=(",", ":")).encode()


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    mac = hmac.new(hmac_key(secret), str(timestamp).encode() + b"." + body, hashlib.sha256)
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


async def post(session: aiohttp.ClientSession, hook: Webhook, key: bytes, event: FeedEvent,
               timeout_s: float) -> None:  # fmt: skip
    """``key``: the hook's HMAC key (``SecretBox.open``)."""
    body = body_of(event)
    ts = int(time.time())
    headers = {
        "Content-Type": "application/json", TIMESTAMP: str(ts), SIGNATURE: sign(key, ts, body),
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
        secrets: SecretBox | None = None,
    ) -> None:  # fmt: skip
        self.ops, self.signal, self.session = ops, signal, session
        self.secrets = secrets or SecretBox([])
        self.retry = retry or RetryPolicy()
        self.clock = clock
        self.delivered = 0
        self.failed_attempts = 0
        self.dead = 0
        self.outage = Outage(logger, "webhook delivery", "registry database", "deliveries wait")
        """The lister's and every worker's: one line when the database goes, one when it is
        back, not one per poll and subscription (``gridwatch.ground.outage``)."""

    async def run(self) -> None:
        """One worker per active subscription; new and deleted subscriptions are picked up."""
        workers: dict[int, asyncio.Task[None]] = {}
        await self._reseal()
        try:
            while True:
                listed = await self._hooks()
                if listed is None:  # the database is away: the workers stay as they are
                    await self.signal.wait()
                    continue
                hooks = {h.id: h for h in listed}
                for gone in set(workers) - set(hooks):
                    workers.pop(gone).cancel()
                for hid in set(hooks) - set(workers):
                    workers[hid] = asyncio.create_task(self._worker(hid), name=f"webhook-{hid}")
                await self.signal.wait()
        finally:
            for task in workers.values():
                task.cancel()
            await asyncio.gather(*workers.values(), return_exceptions=True)

    async def _reseal(self) -> None:
        """Seal plain-text secrets (and those under an older key) with the current key, once,
        when delivery starts; say which secrets cannot be opened (their hooks cannot sign)."""
        with self.outage.guard(StoreUnavailable):
            async with self.ops.store.transaction() as s:
                for hook in await s.scalars(select(Webhook).with_for_update()):
                    try:
                        sealed = self.secrets.resealed(hook.secret)
                    except SecretUnreadable as exc:
                        logger.error("webhook %d (%s): %s; its deliveries cannot be signed and "
                                     "go to the dead letters", hook.id, hook.url, exc)  # fmt: skip
                        continue
                    if sealed is not None:
                        hook.secret = sealed
                        logger.info("webhook %d: secret encrypted at rest", hook.id)
        # failed: delivery goes on with what is stored; the next start tries again

    async def _hooks(self) -> list[Webhook] | None:
        """The active subscriptions; None when they cannot be read (the loop outlives a
        database outage: the next poll tries again)."""
        with self.outage.guard(StoreUnavailable):
            return await self.ops.webhooks(active_only=True)
        return None

    async def _worker(self, hook_id: int) -> None:
        while True:
            # the task's outermost loop: log (an outage once), wait, go on from the cursor
            with self.outage.guard(StoreUnavailable):
                await self._drain(hook_id)
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
                await post(self.session, hook, self._key(hook), event, self.retry.timeout_s)
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

    def _key(self, hook: Webhook) -> bytes:
        try:
            return self.secrets.open(hook.secret)
        except SecretUnreadable as exc:
            raise Failed(f"cannot sign: {exc}") from exc

    async def replay(self, dead_id: int) -> str | None:
        """One more attempt for a dead letter; None when delivered, else the error."""
        _, hook, event = await self.ops.dead_letter_row(dead_id)
        try:
            await post(self.session, hook, self._key(hook), event, self.retry.timeout_s)
        except Failed as exc:
            await self.ops.replayed(dead_id, self.clock(), str(exc))
            return str(exc)
        await self.ops.replayed(dead_id, self.clock(), None)
        return None
