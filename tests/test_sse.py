"""The SSE alert stream and the MQTT platform tree carry the same messages as the webhooks; an
overdue case is urged on the platform topic tree. Many streams share one feed reader; a
revoked token's stream ends; a stream that falls behind catches up. Real mosquitto, real HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from sqlalchemy import update

from device_registry import RegistryStore
from device_registry.alerts.store import FeedEvent
from device_registry.db.tables import AlertOps, ApiToken
from device_registry.delivery import routes as delivery_routes
from device_registry.delivery.runtime import OPS, Delivery
from device_registry.errors import StoreUnavailable
from device_registry.http.auth import SYSTEM, Role, TokenRequest, hash_token, issue, revoked_among
from device_registry.inventory.downlink import BrokerSettings
from gridwatch.ground.contract import AlertState, PlatformLifecycle
from tests._ops_helpers import Registry, now_ms, parked, ponding, registry
from tests.fieldkit import listen
from tests.services import Mosquitto


async def sse_events(resp: aiohttp.ClientResponse) -> AsyncIterator[dict[str, Any]]:
    """Parse ``id`` / ``event`` / ``data`` blocks as a browser's EventSource does."""
    event: dict[str, Any] = {}
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if "data" in event:
                yield event
            event = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            event[key] = json.loads(value) if key == "data" else value


async def collect(reg: Registry, n: int, headers: dict[str, str], query: str = "") -> list[Any]:
    url = f"{reg.url}/api/v1/alerts/stream{query}"
    async with reg.http.get(url, headers={**reg.auth(Role.PLATFORM), **headers}) as resp:
        assert resp.status == 200 and resp.content_type == "text/event-stream"
        got = []
        async for ev in sse_events(resp):
            got.append(ev)
            if len(got) == n:
                return got
    raise AssertionError("stream ended")


async def test_stream_live_filtered_and_resumable(tmp_path: Path) -> None:
    async with registry(tmp_path) as reg:
        # since=0: from the start of the feed, so the test need not race the connection
        reader = asyncio.create_task(collect(reg, 4, {}, "?district=310104&since=0"))
        await reg.ingest(parked("n1", district="310105"))
        await reg.ingest(parked("a1"))
        await reg.ingest(parked("a1", state=AlertState.CLEARED))
        await reg.call("POST", "/api/v1/alerts/a1/close", Role.OPERATOR, {"note": "seen"})
        async with asyncio.timeout(10):
            events = await reader
        assert [(e["event"], e["data"]["alert_id"]) for e in events] == [
            ("alert", "a1"),
            ("lifecycle", "a1"),
            ("alert", "a1"),
            ("lifecycle", "a1"),
        ]
        assert (events[3]["data"]["action"], events[3]["data"]["stage"]) == ("close", "closed")
        assert events[3]["data"]["actor"] == "operator-1"

        # a reconnect with Last-Event-ID gets what came after it, no more, no less
        async with asyncio.timeout(10):
            again = await collect(reg, 3, {"Last-Event-ID": events[0]["id"]}, "?district=310104")
        assert [e["id"] for e in again] == [e["id"] for e in events[1:]]
        assert again[2]["data"] == events[3]["data"]

        status, _ = await reg.call("GET", "/api/v1/alerts/stream", Role.MAINTENANCE)
        assert status == 403


async def test_case_steps_and_urging_on_the_platform_tree(
    tmp_path: Path, mosquitto: Mosquitto, prefix: str
) -> None:
    target = BrokerSettings("127.0.0.1", mosquitto.port, prefix, client_id=f"reg-{prefix}")
    delivery = Delivery(mqtt=target, poll_s=0.2, escalate_every_s=0.1)
    async with listen(mosquitto.port, f"{prefix}/platform/#") as seen, \
            registry(tmp_path, delivery) as reg:  # fmt: skip
        await reg.ingest(ponding("late"), ponding("new", "wl-002", grid="G-77"))
        for alert_id in ("late", "new"):
            await reg.call("POST", f"/api/v1/alerts/{alert_id}/file", Role.OPERATOR, {})
        # the department let its time limit run out (as if filed long ago)
        async with reg.store.transaction() as s:
            await s.execute(update(AlertOps).where(AlertOps.alert_id == "late")
                            .values(due_at=now_ms() - 60_000))  # fmt: skip
        await seen.wait_for(lambda s: any(p.get("action") == "urge" for _, p, _ in s.messages))
    by_topic = [(t.removeprefix(prefix), p) for t, p, _ in seen.messages]
    assert {t for t, _ in by_topic} == {
        "/platform/lifecycle/310104/0406/major",
    }  # the device transitions ("alert") are the bridge's to publish
    steps = [PlatformLifecycle.model_validate(p) for t, p in by_topic]
    assert [(s.alert_id, s.action, s.stage) for s in steps] == [
        ("late", "open", "reported"), ("new", "open", "reported"),
        ("late", "file", "filed"), ("late", "dispatch", "dispatched"),
        ("new", "file", "filed"), ("new", "dispatch", "dispatched"),
        ("late", "urge", "dispatched"),
    ]  # fmt: skip
    urge = steps[-1]
    assert (urge.actor, urge.urged, urge.urge_count, urge.overdue) == ("centre", True, 1, True)
    assert urge.department is not None and urge.class_code == "0406"


async def test_open_streams_do_not_hold_up_shutdown(tmp_path: Path) -> None:
    got_first = asyncio.Event()

    async def hold(reg: Registry) -> None:
        url = f"{reg.url}/api/v1/alerts/stream?since=0"
        # a session of its own: the stream must be ended by the server, not by our client
        async with (
            aiohttp.ClientSession() as http,
            http.get(url, headers=reg.auth(Role.OPERATOR)) as resp,
        ):
            async for _ in sse_events(resp):
                got_first.set()

    async with registry(tmp_path) as reg:
        await reg.ingest(parked("a1"))
        reader = asyncio.create_task(hold(reg))
        async with asyncio.timeout(5):
            await got_first.wait()
        stopping = asyncio.get_running_loop().time()
    # the registry is down: the server ended the stream instead of waiting for the client
    assert asyncio.get_running_loop().time() - stopping < 3
    async with asyncio.timeout(5):
        await asyncio.gather(reader, return_exceptions=True)


# ---- one feed reader for all streams; revoked tokens; slow clients ---------------------------


async def until(predicate: Callable[[], bool], within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.02)  # polling the server's state, with a deadline


def count_feed_reads(reg: Registry, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The loop time of every read of the delivery feed, from now on."""
    ops = reg.app[OPS].store
    reads: list[float] = []
    real = ops.feed

    async def feed(after: int, limit: int = 500) -> list[FeedEvent]:
        reads.append(asyncio.get_running_loop().time())
        return await real(after, limit)

    monkeypatch.setattr(ops, "feed", feed)
    return reads


async def test_many_streams_share_one_feed_read_per_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    streams, poll_s = 20, 0.2
    async with registry(tmp_path, Delivery(poll_s=poll_s)) as reg:
        reads = count_feed_reads(reg, monkeypatch)
        readers = [asyncio.create_task(collect(reg, 2, {})) for _ in range(streams)]
        hub = reg.app[OPS].hub
        await until(lambda: hub.clients == streams)

        # idle: reads come one per poll period, not one per stream per period (that was 100/s)
        del reads[:]
        await until(lambda: len(reads) >= 6)
        assert reads[-1] - reads[0] >= 5 * poll_s * 0.9, reads

        # and every stream still gets every event, woken at once by this process's write
        before = len(reads)
        await reg.ingest(parked("a1"))
        async with asyncio.timeout(10):
            got = await asyncio.gather(*readers)
        assert all([e["event"] for e in events] == ["alert", "lifecycle"] for events in got)
        assert len(reads) - before <= 3, reads[before:]  # the wake-up, and a poll or two


@pytest.mark.parametrize("where", ["this process", "another process"])
async def test_a_stream_ends_when_its_token_is_revoked(tmp_path: Path, where: str) -> None:
    async with registry(tmp_path) as reg:
        crew = await issue(reg.store, TokenRequest(name="night shift", role=Role.OPERATOR), SYSTEM)
        url = f"{reg.url}/api/v1/alerts/stream"
        async with reg.http.get(url, headers={"Authorization": f"Bearer {crew.token}"}) as resp:
            assert resp.status == 200
            assert await resp.content.readline() == b": gridwatch alert stream\n"
            revoked_at = asyncio.get_running_loop().time()
            if where == "this process":
                status, _ = await reg.call("DELETE", f"/api/v1/tokens/{crew.id}", Role.ADMIN, None)
                assert status == 200
            else:  # another registry process: this one's token cache does not know
                async with reg.store.transaction() as s:
                    row = await s.get(ApiToken, crew.id)
                    assert row is not None
                    row.revoked_at = now_ms()
            async with asyncio.timeout(12):
                rest = await resp.content.read()  # until the server ends the stream
            took = asyncio.get_running_loop().time() - revoked_at
        assert b"data:" not in rest
        # one check of every stream's token each 5 s, past the token cache
        assert took < 7, took
        await until(lambda: reg.app[OPS].hub.clients == 0)


async def test_a_stream_that_falls_behind_reads_the_rest_from_the_database(
    tmp_path: Path,
) -> None:
    async with registry(tmp_path) as reg:
        hub = reg.app[OPS].hub
        hub.backlog = 3  # fewer than one batch below brings
        reader = asyncio.create_task(collect(reg, 10, {}))
        await until(lambda: hub.clients == 1)
        assert hub.catch_ups == 0
        await reg.ingest(*(parked(f"b{n}", grid=f"G-{n}") for n in range(5)))
        async with asyncio.timeout(10):
            events = await reader
        # nothing lost, nothing twice, in order
        assert [int(e["id"]) for e in events] == sorted({int(e["id"]) for e in events})
        assert [(e["event"], e["data"]["alert_id"]) for e in events] == [
            (kind, f"b{n}") for n in range(5) for kind in ("alert", "lifecycle")
        ]
        assert hub.catch_ups >= 1  # it did fall behind


async def test_one_token_check_serves_all_streams_and_ends_only_the_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[set[str]] = []

    async def counted(store: RegistryStore, keys: Collection[str]) -> set[str]:
        checks.append(set(keys))
        return await revoked_among(store, keys)

    monkeypatch.setattr(delivery_routes, "revoked_among", counted)
    async with registry(tmp_path) as reg:
        hub = reg.app[OPS].hub
        hub.recheck_s = 0.3
        crews = [await issue(reg.store, TokenRequest(name=f"crew {n}", role=Role.OPERATOR), SYSTEM)
                 for n in range(5)]  # fmt: skip
        async with contextlib.AsyncExitStack() as stack:
            streams = [await stack.enter_async_context(reg.http.get(
                f"{reg.url}/api/v1/alerts/stream", headers={"Authorization": f"Bearer {c.token}"}
            )) for c in crews]  # fmt: skip
            await until(lambda: hub.clients == 5)
            async with reg.store.transaction() as s:
                for c in crews[:2]:
                    row = await s.get(ApiToken, c.id)
                    assert row is not None
                    row.revoked_at = now_ms()
            async with asyncio.timeout(5):
                for resp in streams[:2]:
                    await resp.content.read()  # ended by the server
            await until(lambda: hub.clients == 3)
            await reg.ingest(parked("a1"))
            for resp in streams[2:]:  # the others still deliver
                async with asyncio.timeout(5):
                    async for event in sse_events(resp):
                        assert event["data"]["alert_id"] == "a1"
                        break
        digests = {hash_token(c.token) for c in crews}
        # each check asked about every open stream's token at once
        assert checks and all(keys <= digests for keys in checks)
        assert digests in checks


async def test_a_client_of_a_replaced_database_gets_the_new_feed(tmp_path: Path) -> None:
    async with registry(tmp_path) as reg:
        await reg.ingest(parked("a1"))
        # the client saw seq 1000 of a feed this database never had (restored from a backup)
        reader = asyncio.create_task(collect(reg, 2, {"Last-Event-ID": "1000"}))
        await until(lambda: reg.app[OPS].hub.clients == 1)
        await reg.ingest(parked("a2", grid="310104017021077"))
        async with asyncio.timeout(10):
            events = await reader
        assert [(e["event"], e["data"]["alert_id"]) for e in events] == [
            ("alert", "a2"), ("lifecycle", "a2"),
        ]  # fmt: skip


async def test_the_feed_reader_outlives_a_failing_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="device_registry.delivery.sse")
    async with registry(tmp_path) as reg:
        ops = reg.app[OPS].store
        real, failures = ops.feed, [3]

        async def feed(after: int, limit: int = 500) -> list[FeedEvent]:
            if failures[0]:
                failures[0] -= 1
                raise StoreUnavailable("database is locked (injected)")
            return await real(after, limit)

        reader = asyncio.create_task(collect(reg, 2, {}))
        await until(lambda: reg.app[OPS].hub.clients == 1)
        monkeypatch.setattr(ops, "feed", feed)
        await reg.ingest(parked("a1"))
        async with asyncio.timeout(10):
            events = await reader
        assert [e["data"]["alert_id"] for e in events] == ["a1", "a1"]
    said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name.endswith(".sse")]
    # one line when it starts, one when it ends (gridwatch.ground.outage), no traceback
    assert [level for level, _ in said] == ["ERROR", "INFO"], said
    assert said[0][1] == ("alert stream: feed unavailable, streams wait: database is locked "
                          "(injected)")  # fmt: skip
    assert said[1][1].startswith("alert stream: feed is back after "), said
    assert said[1][1].endswith("(3 failed attempts)"), said
    assert not any(r.exc_info for r in caplog.records if r.name.endswith(".sse"))
