"""The SSE alert stream and the MQTT platform tree carry the same messages as the webhooks; an
overdue alert is escalated on the platform topic tree. Real mosquitto, real HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from device_registry.delivery.mqtt_out import MqttTarget
from device_registry.delivery.runtime import Delivery
from device_registry.http.auth import Role
from gridwatch.ground.contract import PlatformEscalation, PlatformLifecycle
from tests._ops_helpers import Registry, now_ms, registry, smoke
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
        reader = asyncio.create_task(collect(reg, 3, {}, "?district=futian&since=0"))
        await reg.ingest(smoke("n1", district="nanshan"))
        await reg.ingest(smoke("a1"))
        await reg.call("POST", "/api/v1/alerts/a1/ack", Role.OPERATOR, {"note": "seen"})
        async with asyncio.timeout(10):
            events = await reader
        assert [(e["event"], e["data"]["alert_id"]) for e in events] == [
            ("alert", "a1"),
            ("lifecycle", "a1"),
            ("lifecycle", "a1"),
        ]
        assert events[2]["data"]["action"] == "ack" and events[2]["data"]["actor"] == "operator-1"

        # a reconnect with Last-Event-ID gets what came after it, no more, no less
        async with asyncio.timeout(10):
            again = await collect(reg, 2, {"Last-Event-ID": events[0]["id"]}, "?district=futian")
        assert [e["id"] for e in again] == [events[1]["id"], events[2]["id"]]
        assert again[1]["data"] == events[2]["data"]

        status, _ = await reg.call("GET", "/api/v1/alerts/stream", Role.MAINTENANCE)
        assert status == 403


async def test_lifecycle_and_escalation_on_the_platform_tree(
    tmp_path: Path, mosquitto: Mosquitto, prefix: str
) -> None:
    target = MqttTarget("127.0.0.1", mosquitto.port, prefix, client_id=f"reg-{prefix}")
    delivery = Delivery(mqtt=target, poll_s=0.2, escalate_every_s=0.1)
    async with listen(mosquitto.port, f"{prefix}/platform/#") as seen, \
            registry(tmp_path, delivery) as reg:  # fmt: skip
        # raised 16 minutes ago: past the 15-minute limit of FIRE-SMOKE-01
        await reg.ingest(smoke("old", at=now_ms() - 16 * 60_000))
        await reg.ingest(smoke("new", grid="FT-0077"))
        await reg.call("POST", "/api/v1/alerts/new/ack", Role.OPERATOR, {})
        await seen.wait_for(
            lambda s: (
                len(s.on("critical")) >= 4 and any("/escalation/" in t for t, _, _ in s.messages)
            )
        )
    by_topic = [(t.removeprefix(prefix), p) for t, p, _ in seen.messages]
    esc = [PlatformEscalation.model_validate(p) for t, p in by_topic if "/escalation/" in t]
    assert [e.alert_id for e in esc] == ["old"] and esc[0].overdue_ms >= 60_000
    assert {t for t, _ in by_topic} == {
        "/platform/lifecycle/futian/FIRE-SMOKE-01/critical",
        "/platform/escalation/futian/FIRE-SMOKE-01/critical",
    }  # the device transitions ("alert") are the bridge's to publish
    steps = [PlatformLifecycle.model_validate(p) for t, p in by_topic if "/lifecycle/" in t]
    assert [(s.alert_id, s.action) for s in steps] == [("old", "open"), ("new", "open"),
                                                        ("new", "ack")]  # fmt: skip


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
        await reg.ingest(smoke("a1"))
        reader = asyncio.create_task(hold(reg))
        async with asyncio.timeout(5):
            await got_first.wait()
        stopping = asyncio.get_running_loop().time()
    # the registry is down: the server ended the stream instead of waiting for the client
    assert asyncio.get_running_loop().time() - stopping < 3
    async with asyncio.timeout(5):
        await asyncio.gather(reader, return_exceptions=True)
