"""Webhooks against a real local HTTP receiver that fails on purpose: signatures checked on every
request, retries with growing delays, dead letters listed and replayed through the API."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from device_registry.delivery.webhooks import SIGNATURE, TIMESTAMP, RetryPolicy, verify
from device_registry.http.auth import Role
from device_registry.http.opsapp import LEASE, Delivery
from tests._ops_helpers import registry, smoke

SECRET = "s3cret-for-the-city-platform"


@dataclass
class Receiver:
    """Answers 500 while ``failing`` says so; records every attempt and every good delivery."""

    url: str = ""
    fail_next: int = 0
    fail_always: bool = False
    attempts: list[tuple[float, int]] = field(default_factory=list)
    """(monotonic time, seq) of each request."""
    delivered: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(SECRET, request.headers[TIMESTAMP], body, request.headers[SIGNATURE],
                      time.time()):  # fmt: skip
            self.bad_signatures += 1
            return web.Response(status=401)
        seq = int(request.headers["X-Gridwatch-Seq"])
        async with self.changed:
            self.attempts.append((time.monotonic(), seq))
            self.changed.notify_all()
            if self.fail_always or self.fail_next > 0:
                self.fail_next -= 1
                return web.Response(status=500, text="on purpose")
            self.delivered.append(json.loads(body))
            self.changed.notify_all()
        return web.Response(status=204)

    async def wait(self, predicate: Any, within_s: float = 10.0) -> None:
        async with asyncio.timeout(within_s), self.changed:
            await self.changed.wait_for(lambda: predicate(self))


@asynccontextmanager
async def receiver() -> AsyncIterator[Receiver]:
    rec = Receiver()
    app = web.Application()
    app.router.add_post("/hook", rec.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    rec.url = f"http://{host}:{port}/hook"
    try:
        yield rec
    finally:
        await runner.cleanup()


FAST = Delivery(poll_s=0.2, retry=RetryPolicy(attempts=3, first_s=0.1, jitter=0.0, timeout_s=2))


async def test_retries_dead_letters_and_replay(tmp_path: Path) -> None:
    async with receiver() as rec, registry(tmp_path, FAST) as reg:
        status, hook = await reg.call(
            "POST",
            "/api/v1/webhooks",
            Role.ADMIN,
            {"url": rec.url, "secret": SECRET, "district": "futian"},
        )
        assert status == 201

        # two failures, then the third attempt gets through: the alert and its lifecycle "open"
        rec.fail_next = 2
        await reg.ingest(smoke("a1"))
        await rec.wait(lambda r: len(r.delivered) == 2)
        assert [m["kind"] for m in rec.delivered] == ["alert", "lifecycle"]
        assert rec.delivered[0]["alert_id"] == "a1" and rec.delivered[1]["incident_new"] is True
        first = [t for t, seq in rec.attempts if seq == rec.attempts[0][1]]
        assert len(first) == 3
        gaps = [b - a for a, b in itertools.pairwise(first)]
        assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # exponential: 0.1 s, then 0.2 s

        # another district is filtered out; a receiver down for good makes a dead letter
        await reg.ingest(smoke("n1", district="nanshan"))
        rec.fail_always = True
        await reg.call("POST", "/api/v1/alerts/a1/ack", Role.OPERATOR, {"note": "on it"})
        async with asyncio.timeout(10):
            while True:
                status, dead = await reg.call("GET", "/api/v1/webhooks/dead-letters", Role.OPERATOR)
                if dead:
                    break
                await asyncio.sleep(0.05)  # polling another component's state, with a deadline
        [d] = dead
        assert d["attempts"] == 3 and d["last_error"] == "HTTP 500"
        assert d["message"]["action"] == "ack" and d["message"]["note"] == "on it"

        # replay once the receiver is back: delivered, and gone from the pending list
        rec.fail_always = False
        status, replay = await reg.call(
            "POST", f"/api/v1/webhooks/dead-letters/{d['id']}/replay", Role.OPERATOR
        )
        assert status == 200 and replay["delivered"] is True
        assert rec.delivered[-1]["action"] == "ack"
        _, dead = await reg.call("GET", "/api/v1/webhooks/dead-letters", Role.ADMIN)
        assert dead == []
        assert all(m["location"]["district"] == "futian" for m in rec.delivered)
        assert rec.bad_signatures == 0
        _, [h] = await reg.call("GET", "/api/v1/webhooks", Role.ADMIN)
        assert h["id"] == hook["id"] and h["cursor"] >= d["seq"]


async def test_signature_binds_body_and_timestamp() -> None:
    from device_registry.delivery.webhooks import sign

    sig = sign(SECRET, 1_700_000_000, b'{"a":1}')
    assert verify(SECRET, "1700000000", b'{"a":1}', sig, 1_700_000_010)
    assert not verify(SECRET, "1700000000", b'{"a":2}', sig, 1_700_000_010)  # body changed
    assert not verify(SECRET, "1700000001", b'{"a":1}', sig, 1_700_000_010)  # timestamp changed
    assert not verify("other-secret-0000000", "1700000000", b'{"a":1}', sig, 1_700_000_010)
    assert not verify(SECRET, "1700000000", b'{"a":1}', sig, 1_700_000_900)  # too old: replay


async def test_two_registry_processes_deliver_each_message_once_and_take_over(
    registry_url: str, tmp_path: Path
) -> None:
    """Registries scaled out on one database: one delivers, the other stands by, and takes over
    from the persisted cursor when the first goes away."""
    url = registry_url
    quick = Delivery(poll_s=0.2, lease_retry_s=0.2, retry=FAST.retry)
    async with receiver() as rec, contextlib.AsyncExitStack() as second_stack:
        async with contextlib.AsyncExitStack() as first_stack:
            first = await first_stack.enter_async_context(registry(tmp_path, quick, url, "a"))
            await until(lambda: first.app[LEASE].held)
            second = await second_stack.enter_async_context(registry(tmp_path, quick, url, "b"))
            status, _ = await second.call("POST", "/api/v1/webhooks", Role.ADMIN,
                                          {"url": rec.url, "secret": SECRET})  # fmt: skip
            assert status == 201
            await second.ingest(smoke("a1"))
            await rec.wait(lambda r: len(r.delivered) == 2)
            await asyncio.sleep(1.0)  # time enough for a second deliverer to send them again
            assert [(m["kind"], m["alert_id"]) for m in rec.delivered] == [
                ("alert", "a1"), ("lifecycle", "a1")
            ]  # fmt: skip
            assert not second.app[LEASE].held
        # the delivering process is gone: the other takes over where its cursor stopped
        await until(lambda: second.app[LEASE].held)
        await second.ingest(smoke("a2"))
        await rec.wait(lambda r: len(r.delivered) == 4)
        assert [(m["kind"], m["alert_id"]) for m in rec.delivered][2:] == [
            ("alert", "a2"), ("lifecycle", "a2")
        ]  # fmt: skip


async def until(predicate: Any, within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.05)  # polling another component's state, with a deadline
