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

import pytest
from aiohttp import web
from cryptography.fernet import Fernet
from sqlalchemy import select

from device_registry.db.tables import Webhook
from device_registry.delivery.runtime import LEASE, Delivery
from device_registry.delivery.webhooks import (
    SECRET_KEY_ENV,
    SIGNATURE,
    TIMESTAMP,
    RetryPolicy,
    SecretBox,
    SecretUnreadable,
    sign,
    verify,
)
from device_registry.errors import RegistryError
from device_registry.http.auth import Role
from tests._ops_helpers import parked, registry, smoke

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
    seqs: set[int] = field(default_factory=set)
    """Feed seqs delivered: the dedupe key, since delivery is at-least-once (a registry that
    stops between the receiver's answer and recording it sends that message again)."""
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    secret: str = SECRET

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if not verify(self.secret, request.headers[TIMESTAMP], body, request.headers[SIGNATURE],
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
            self.seqs.add(seq)
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
            {"url": rec.url, "secret": SECRET, "district": "310104"},
        )
        assert status == 201

        # two failures, then the third attempt gets through: the alert and its case's steps (a
        # smoke alarm is filed and dispatched at once)
        rec.fail_next = 2
        await reg.ingest(smoke("a1"))
        await rec.wait(lambda r: len(r.delivered) == 4)
        assert [m.get("action", m["kind"]) for m in rec.delivered] == [
            "alert", "open", "file", "dispatch"
        ]  # fmt: skip
        assert rec.delivered[0]["alert_id"] == "a1" and rec.delivered[1]["incident_new"] is True
        first = [t for t, seq in rec.attempts if seq == rec.attempts[0][1]]
        assert len(first) == 3
        gaps = [b - a for a, b in itertools.pairwise(first)]
        assert gaps[0] >= 0.1 and gaps[1] >= 0.2  # exponential: 0.1 s, then 0.2 s

        # another district is filtered out; a receiver down for good makes a dead letter
        await reg.ingest(smoke("n1", "sd-009", district="310105"))
        rec.fail_always = True
        await reg.call("POST", "/api/v1/alerts/a1/urge", Role.OPERATOR, {"note": "on it"})
        async with asyncio.timeout(10):
            while True:
                status, dead = await reg.call("GET", "/api/v1/webhooks/dead-letters", Role.OPERATOR)
                if dead:
                    break
                await asyncio.sleep(0.05)  # polling another component's state, with a deadline
        [d] = dead
        assert d["attempts"] == 3 and d["last_error"] == "HTTP 500"
        assert d["message"]["action"] == "urge" and d["message"]["note"] == "on it"
        assert (d["message"]["stage"], d["message"]["urged"]) == ("dispatched", True)

        # replay once the receiver is back: delivered, and gone from the pending list
        rec.fail_always = False
        status, replay = await reg.call(
            "POST", f"/api/v1/webhooks/dead-letters/{d['id']}/replay", Role.OPERATOR
        )
        assert status == 200 and replay["delivered"] is True
        assert rec.delivered[-1]["action"] == "urge"
        _, dead = await reg.call("GET", "/api/v1/webhooks/dead-letters", Role.ADMIN)
        assert dead == []
        assert all(m["location"]["district"] == "310104" for m in rec.delivered)
        assert rec.bad_signatures == 0
        _, [h] = await reg.call("GET", "/api/v1/webhooks", Role.ADMIN)
        assert h["id"] == hook["id"] and h["cursor"] >= d["seq"]


async def test_signature_binds_body_and_timestamp() -> None:
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
            await second.ingest(parked("a1"))
            await rec.wait(lambda r: len(r.delivered) == 2)
            await asyncio.sleep(1.0)  # time enough for a second deliverer to send them again
            assert [(m["kind"], m["alert_id"]) for m in rec.delivered] == [
                ("alert", "a1"), ("lifecycle", "a1")
            ]  # fmt: skip
            assert not second.app[LEASE].held
        # the delivering process is gone: the other takes over where its cursor stopped
        await until(lambda: second.app[LEASE].held)
        await second.ingest(parked("a2"))
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


# ---- the secret at rest (issue 16 #17) -------------------------------------------------------

LONG_SECRET = "ünïcode-and-long-" + "x" * 183  # 200 characters, the most the API takes
KEY_A, KEY_B = Fernet.generate_key().decode(), Fernet.generate_key().decode()


async def stored_secrets(reg: Any) -> list[str]:
    async with reg.store.transaction() as s:
        return list(await s.scalars(select(Webhook.secret).order_by(Webhook.id)))


async def test_the_secret_is_encrypted_at_rest_and_signing_still_verifies(
    registry_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_KEY_ENV, KEY_A)
    async with receiver() as rec, registry(tmp_path, FAST, registry_url) as reg:
        rec.secret = LONG_SECRET
        status, _ = await reg.call("POST", "/api/v1/webhooks", Role.ADMIN,
                                   {"url": rec.url, "secret": LONG_SECRET})  # fmt: skip
        assert status == 201
        [stored] = await stored_secrets(reg)
        assert stored.startswith("fernet:v1:") and len(stored) <= 200  # fits the column as it is
        assert LONG_SECRET not in stored and "x" * 20 not in stored
        await reg.ingest(parked("a1"))
        await rec.wait(lambda r: len(r.delivered) == 2)
        assert rec.bad_signatures == 0


async def test_plain_text_secrets_are_read_then_encrypted_and_keys_rotate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with receiver() as rec:
        monkeypatch.delenv(SECRET_KEY_ENV, raising=False)
        async with registry(tmp_path, FAST, name="before") as reg:  # an upgrade: no key yet
            await reg.call("POST", "/api/v1/webhooks", Role.ADMIN,
                           {"url": rec.url, "secret": SECRET})  # fmt: skip
            assert await stored_secrets(reg) == [SECRET]
            await reg.ingest(parked("a1"))
            await rec.wait(lambda r: len(r.seqs) == 2)
        warned = [r for r in caplog.records if SECRET_KEY_ENV in r.getMessage()]
        assert [(r.levelname, r.getMessage()) for r in warned] == [
            ("WARNING", f"{SECRET_KEY_ENV} is not set: webhook secrets are kept in plain text in "
                        "the registry database (see docs/security.md)")
        ]  # fmt: skip

        monkeypatch.setenv(SECRET_KEY_ENV, KEY_A)
        async with registry(tmp_path, FAST, name="keyed") as reg:
            await until(lambda: reg.app[LEASE].held)
            [sealed_a] = await until_stored(reg, lambda v: v.startswith("fernet:v1:"))
            await reg.ingest(parked("a2"))
            await rec.wait(lambda r: len(r.seqs) == 4)

        monkeypatch.setenv(SECRET_KEY_ENV, f"{KEY_B},{KEY_A}")  # a new key first, the old after
        async with registry(tmp_path, FAST, name="rotated") as reg:
            [sealed_b] = await until_stored(reg, lambda v: v != sealed_a)
            assert sealed_b.startswith("fernet:v1:")
            await reg.ingest(parked("a3"))
            await rec.wait(lambda r: len(r.seqs) == 6)
        assert rec.bad_signatures == 0

        monkeypatch.setenv(SECRET_KEY_ENV, KEY_A)  # the key it was sealed with is gone
        async with registry(tmp_path, FAST, name="lost") as reg:
            await reg.ingest(parked("a4"))
            dead = await until_dead(reg)
            assert dead[0]["last_error"] == (
                f"cannot sign: the secret was encrypted with a key that is not in {SECRET_KEY_ENV}"
            )
        assert any(r.levelname == "ERROR" and "cannot be signed" in r.getMessage()
                   for r in caplog.records)  # fmt: skip
        assert len(rec.seqs) == 6  # nothing unsigned went out


async def until_stored(reg: Any, ok: Any) -> list[str]:
    async with asyncio.timeout(10):
        while True:
            found = await stored_secrets(reg)
            if all(ok(v) for v in found):
                return found
            await asyncio.sleep(0.05)  # polling another component's state, with a deadline


async def until_dead(reg: Any) -> list[dict[str, Any]]:
    async with asyncio.timeout(10):
        while True:
            _, dead = await reg.call("GET", "/api/v1/webhooks/dead-letters", Role.ADMIN)
            if dead:
                return list(dead)
            await asyncio.sleep(0.05)  # polling another component's state, with a deadline


@pytest.mark.parametrize(
    "secret",
    ["s" * 16, "s" * 64, "s" * 65, "é" * 32, "é" * 33, LONG_SECRET, "x" * 200],
)
def test_a_sealed_secret_signs_as_the_secret_itself_and_fits_the_column(secret: str) -> None:
    box = SecretBox([KEY_A])
    stored = box.seal(secret)
    assert len(stored) <= 200 and secret not in stored
    body = b'{"kind":"alert"}'
    assert sign(box.open(stored), 1_700_000_000, body) == sign(secret, 1_700_000_000, body)
    assert verify(secret, "1700000000", body, sign(box.open(stored), 1_700_000_000, body),
                  1_700_000_000)  # fmt: skip


@pytest.mark.parametrize(
    ("keys", "stored", "error"),
    [
        ([], "fernet:v1:gAAAA", f"the secret is encrypted and {SECRET_KEY_ENV} is not set"),
        ([KEY_B], SecretBox([KEY_A]).seal(SECRET), "encrypted with a key that is not in"),
    ],
)
def test_a_secret_that_cannot_be_opened_says_why(keys: list[str], stored: str, error: str) -> None:
    with pytest.raises(SecretUnreadable, match=error):
        SecretBox(keys).open(stored)


def test_a_malformed_key_is_refused_with_what_to_do() -> None:
    with pytest.raises(RegistryError, match=f"{SECRET_KEY_ENV} must be Fernet keys"):
        SecretBox(["not-a-key"])
