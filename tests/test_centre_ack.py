"""The centre's acknowledgement (``contract.Ack``) against a real mosquitto and a real bridge:
every message a commit dealt with is named to its own gateway (stored, duplicate, quarantined),
also when bridges share a subscription and each commits part of one stream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from cloud_bridge import Bridge, SqliteSink
from device_registry import RegistryStore
from edge.app import EdgeAgent
from edge.outbox import Queued
from gridwatch.ground.contract import Ack, AlertState, Topics
from gridwatch.top.sim.modbus import SimField
from tests._central_helpers import (
    alert,
    batch,
    bridge_config,
    bridge_on,
    now_ms,
    publisher,
    reading,
    until,
)
from tests.fieldkit import Listener, gateway_config, listen, running
from tests.services import Mosquitto


def acks_of(seen: Listener, gateway: str) -> list[Ack]:
    return [Ack.model_validate(doc) for topic, doc, _ in seen.messages
            if topic.endswith(f"/gw/{gateway}/ack")]  # fmt: skip


def acked(seen: Listener, gateway: str) -> dict[str, set[int]]:
    """Every (stream -> seq) the centre has acknowledged to ``gateway`` so far."""
    out: dict[str, set[int]] = {}
    for topic, doc, _ in seen.messages:
        if topic.endswith(f"/gw/{gateway}/ack"):
            ack = Ack.model_validate(doc)
            assert ack.gateway == gateway
            for stream, runs in ack.streams.items():
                out.setdefault(stream, set()).update(
                    n for first, last in runs for n in range(first, last + 1)
                )
    return out


async def test_every_message_dealt_with_is_acknowledged_to_its_own_gateway(
    mosquitto: Mosquitto, store: RegistryStore, sink: SqliteSink, prefix: str, tmp_path: Path
) -> None:
    gw, other, t = f"{prefix}-a", f"{prefix}-b", now_ms()
    topics = Topics(prefix)
    first = batch(gw, [reading("d1", "level", 1.0, t)], seq=1)
    out_of_range = batch(gw, [reading("d1", "level", 2.0, t)], seq=3).model_dump_json()
    out_of_range = out_of_range.replace('"level"', '"' + "x" * 100 + '"')  # a point name too long
    off_clock = alert(gw, "a1", AlertState.RAISED, t - 30 * 24 * 3600 * 1000, seq=1)
    async with (
        listen(mosquitto.port, topics.all_gateways("ack")) as seen,
        bridge_on(bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path), store, sink),
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        await pub.publish(topics.telemetry(gw), first.model_dump_json(), qos=1)
        await seen.wait_for(lambda s: acked(s, gw) == {"telemetry": {1}})
        # its ack was lost, say: the gateway sends it again, the bridge drops it as a duplicate
        # and acknowledges it again, or the gateway would send it forever
        await pub.publish(topics.telemetry(gw), first.model_dump_json(), qos=1)
        await seen.wait_for(lambda s: len(acks_of(s, gw)) == 2)
        assert [a.streams for a in acks_of(seen, gw)] == [{"telemetry": [(1, 1)]}] * 2
        await pub.publish(
            topics.telemetry(gw), batch(gw, [reading("d1", "level", 3.0, t)], seq=2)
            .model_dump_json(), qos=1,
        )  # fmt: skip
        await pub.publish(topics.telemetry(gw), out_of_range, qos=1)  # quarantined at decode
        await pub.publish(topics.alert(gw), off_clock.model_dump_json(), qos=1)  # quarantined
        await pub.publish(topics.telemetry(gw), b"not json", qos=1)  # not from an outbox
        await pub.publish(
            topics.telemetry(other), batch(other, [reading("d9", "level", 1.0, t)], seq=7)
            .model_dump_json(), qos=1,
        )  # fmt: skip
        await seen.wait_for(
            lambda s: (
                acked(s, gw) == {"telemetry": {1, 2, 3}, "alert": {1}}
                and acked(s, other) == {"telemetry": {7}}
            )
        )
    assert json.dumps(sorted(q.reason for q in await store.quarantine())) == json.dumps(
        ["bad_json", "clock", "out_of_range"]
    )


async def test_bridges_sharing_a_subscription_acknowledge_what_each_committed(
    mosquitto: Mosquitto, store: RegistryStore, sink: SqliteSink, prefix: str, tmp_path: Path
) -> None:
    """Each member commits part of one stream; its acks name that part only (runs, not a
    watermark), and together they name every number once committed."""
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    cfgs = [bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path, share_group="g",
                          client_id=f"{prefix}-{i}") for i in (1, 2)]  # fmt: skip
    seqs = range(1, 41)
    async with (
        listen(mosquitto.port, topics.ack(gw)) as seen,
        bridge_on(cfgs[0], store, sink),
        bridge_on(cfgs[1], store, sink),
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        for seq in seqs:
            msg = batch(gw, [reading("d1", "level", float(seq), t + seq)], seq=seq)
            await pub.publish(topics.telemetry(gw), msg.model_dump_json(), qos=1)
        await seen.wait_for(lambda s: acked(s, gw) == {"telemetry": set(seqs)})
    # every acknowledged number is committed: its id is in the registry
    with sqlite3.connect(tmp_path / "registry.db") as db:
        stored = {
            n for (n,) in db.execute("SELECT seq FROM seen_messages WHERE gateway = ?", (gw,))
        }
    assert stored == set(seqs)
    runs = [Ack.model_validate(doc).streams["telemetry"] for _, doc, _ in seen.messages]
    assert len(runs) >= 2  # both members acknowledged
    assert any(len(r) > 1 for r in runs) or len(runs) > 2  # neither covered the stream alone


async def any_bridge(bridges: list[Bridge], done: Callable[[], bool]) -> None:
    """Until ``done`` holds, looked at after each committed step of any of ``bridges``."""
    waiters = [asyncio.create_task(b.until(lambda _: done())) for b in bridges]
    try:
        async with asyncio.timeout(10):
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


def outbox_streams(agent: EdgeAgent) -> dict[int, int]:
    """{seq: state} of the telemetry the edge still holds (0 queued, 1 sent, 2 acknowledged)."""
    rows = agent.outbox.db.execute("SELECT seq, state FROM outbox WHERE stream = 'telemetry'")
    return {int(q): int(s) for q, s in rows}


def committed_seqs(registry: Path, gateway: str, stream: str = "telemetry") -> set[int]:
    with sqlite3.connect(registry) as db:
        rows = db.execute(
            "SELECT seq FROM seen_messages WHERE gateway = ? AND stream = ?", (gateway, stream)
        )
        return {int(q) for (q,) in rows}


async def test_what_the_broker_acknowledged_while_no_bridge_ran_arrives_when_one_starts(
    mosquitto: Mosquitto, store: RegistryStore, sink: SqliteSink, prefix: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """The broker PUBACKs every message, but no centre has subscribed yet, so it delivers them
    to nobody: the edge keeps them (and says so) until a bridge commits them."""
    monkeypatch.setattr("edge.uplink.WAIT_WARN_S", 1.0)  # the production bound is a minute
    cfg, devices, _ = gateway_config(tmp_path, mosquitto.port, prefix, ack_timeout_s=0.5)
    cfg = cfg.model_copy(update={"health_interval_s": 0.5})
    gw = cfg.gateway.id
    caplog.set_level(logging.INFO, logger="edge.uplink")
    async with (
        SimField(devices, update_s=0.2),
        listen(mosquitto.port, Topics(prefix).health(gw)) as health,
        running(cfg, devices) as agent,
    ):
        uplink = agent.uplink
        await uplink.wait_until(lambda u: u.published >= 5, within_s=15)
        await uplink.wait_until(lambda u: "not acknowledged by the centre" in caplog.text, 15)
        # and its health report says so
        await health.wait_for(lambda h: any(
            r["outbox_unacked"] > 0 and r["outbox_unacked_oldest_s"] > 1.0 for r in h.on("health")
        ))  # fmt: skip
        produced = agent.outbox.meta("seq:telemetry")
        assert set(outbox_streams(agent)) >= set(range(1, produced + 1))  # all still held
        assert uplink.waiting.count > 0 and (uplink.waiting.oldest_s or 0) > 1.0
        bridge = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path)
        async with bridge_on(bridge, store, sink):
            await uplink.wait_until(
                lambda u: all(s == 2 for q, s in outbox_streams(agent).items() if q <= produced),
                within_s=20,
            )
        assert "the centre acknowledges again" in caplog.text
    assert committed_seqs(tmp_path / "registry.db", gw) >= set(range(1, produced + 1))
    warnings = [r for r in caplog.records if "not acknowledged by the centre" in r.message]
    assert [r.levelno for r in warnings] == [logging.WARNING]  # once, not at every look


async def test_ack_broker_forgets_a_message_at_its_puback(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """For a third-party centre that never acknowledges: today's behaviour, nothing waits."""
    cfg, devices, _ = gateway_config(tmp_path, mosquitto.port, prefix, ack="broker")
    async with SimField(devices, update_s=0.2), running(cfg, devices) as agent:
        await agent.uplink.wait_until(lambda u: u.published >= 5, within_s=15)
        await agent.pipeline.watch.until(lambda: not outbox_streams(agent), within_s=5)
        assert agent.outbox.kept == 0 and agent.uplink.waiting.count == 0


@pytest.mark.parametrize("share_group", [None, "g"], ids=["lone bridge", "shared subscription"])
async def test_a_message_the_broker_lost_is_repaired_from_the_outbox(
    mosquitto: Mosquitto, store: RegistryStore, sink: SqliteSink, prefix: str, tmp_path: Path,
    share_group: str | None,
) -> None:  # fmt: skip
    """Telemetry seq 3 is lost after its PUBACK (a broker crash): the bridge sees the gap (a
    lone bridge as the numbers arrive, bridges on a shared subscription in their audit), asks
    the gateway, and the outbox sends it again; the gap is then no longer counted missing."""
    lost: list[int] = []
    # the ack timeout would resend it too: far off, so only the repair can bring it back
    cfg, devices, _ = gateway_config(tmp_path, mosquitto.port, prefix, ack_timeout_s=3600)
    gw = cfg.gateway.id
    bridges = [
        bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path, share_group=share_group,
                      client_id=f"{prefix}-{i}", gap_audit_s=0.2, gap_settle_s=0.4)
        for i in ((1, 2) if share_group else (1,))
    ]  # fmt: skip
    async with contextlib.AsyncExitStack() as stack:
        running_bridges = [await stack.enter_async_context(bridge_on(c, store, sink))
                           for c in bridges]  # fmt: skip
        await stack.enter_async_context(SimField(devices, update_s=0.2))
        agent = await stack.enter_async_context(running(cfg, devices))
        box, peek = agent.outbox, agent.outbox.peek

        def peek_losing_seq_3(limit: int, after: tuple[int, int] = (-1, 0)) -> list[Queued]:
            batch = peek(limit, after)
            for m in batch:
                if not lost and m.stream == "telemetry" and json.loads(m.payload)["seq"] == 3:
                    box.sent([m.id], at=agent.clock())  # PUBACKed, then lost with the broker
                    lost.append(m.id)
                    return [other for other in batch if other is not m]
            return batch

        box.peek = peek_losing_seq_3  # type: ignore[method-assign]
        await agent.uplink.wait_until(lambda u: u.repaired >= 1, within_s=20)
        registry = tmp_path / "registry.db"
        await any_bridge(running_bridges, lambda: 3 in committed_seqs(registry, gw))
        assert sum(b.repairs_asked for b in running_bridges) >= 1
        if share_group is None:
            await until(running_bridges[0], lambda s: s.repaired == 1 and s.missing == 0)
    assert lost and committed_seqs(tmp_path / "registry.db", gw) >= {1, 2, 3, 4}


async def test_a_centre_back_late_gets_the_backlog_at_once_not_at_the_ack_timeout(
    mosquitto: Mosquitto, store: RegistryStore, sink: SqliteSink, prefix: str, tmp_path: Path,
) -> None:  # fmt: skip
    """What the broker delivered to nobody is sent again as soon as the centre acknowledges a
    later number, not when a long ack timeout (grown while the centre was away) runs out."""
    cfg, devices, _ = gateway_config(tmp_path, mosquitto.port, prefix, ack_timeout_s=300)
    gw = cfg.gateway.id
    async with SimField(devices, update_s=0.2), running(cfg, devices) as agent:
        uplink = agent.uplink
        await uplink.wait_until(lambda u: u.published >= 5, within_s=15)
        produced = agent.outbox.meta("seq:telemetry")
        bridge = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path)
        async with bridge_on(bridge, store, sink):
            await uplink.wait_until(
                lambda u: all(s == 2 for q, s in outbox_streams(agent).items() if q <= produced),
                within_s=20,
            )
    assert committed_seqs(tmp_path / "registry.db", gw) >= set(range(1, produced + 1))
