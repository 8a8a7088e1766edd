"""Bridges on a shared subscription, on a real mosquitto (issue 17): a bridge owns its
subscriptions (moved into, out of or between share groups it takes only its turn), a member
that stops holds no alert past the stated bound, and a gap reported while a member was away is
withdrawn when its turn arrives after all."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import shutil
import sqlite3
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import aiomqtt
import pytest

from cloud_bridge import Bridge, BridgeConfig, SqliteSink
from cloud_bridge.mqtt import wanted_filters
from device_registry import RegistryStore
from edge.outbox import PRIO_ALERT
from gridwatch.ground.contract import AlertState, Topics
from gridwatch.top.cli import build_parser
from gridwatch.top.sim.modbus import SimField
from tests._central_helpers import (
    alert,
    batch,
    birth,
    bridge_config,
    bridge_on,
    now_ms,
    publisher,
    reading,
)
from tests._faults_helpers import until_true
from tests.fieldkit import gateway_config, listen, running
from tests.services import Mosquitto

# ---- which filters a bridge's session wants, and which it may have left behind ---------------

# (share group, filters, unshared, subscribed, may hold from an earlier configuration)
WANTED: list[tuple[str | None, list[str], list[str], list[str], list[str]]] = [
    (None, ["p/gw/+/telemetry"], [], ["p/gw/+/telemetry"], []),
    ("g", ["p/gw/+/telemetry"], [], ["$share/g/p/gw/+/telemetry"], ["p/gw/+/telemetry"]),
    ("g", ["p/gw/+/alert", "p/gw/+/status"], ["p/gw/+/status"],
     ["$share/g/p/gw/+/alert", "p/gw/+/status"],
     ["$share/g/p/gw/+/status", "p/gw/+/alert"]),  # status whole: Birth and Death are state
    (None, ["p/gw/+/status"], ["p/gw/+/status"], ["p/gw/+/status"], []),
]  # fmt: skip


@pytest.mark.parametrize(("group", "filters", "unshared", "wanted", "may_hold"), WANTED)
def test_wanted_filters(
    group: str | None, filters: list[str], unshared: list[str], wanted: list[str],
    may_hold: list[str],
) -> None:  # fmt: skip
    assert wanted_filters(group, filters, unshared) == (wanted, may_hold)


# (share group, lane, session expiry, keepalive, subscribed)
SESSIONS: list[tuple[str | None, str, int, int, list[str]]] = [
    (None, "telemetry", 7 * 24 * 3600, 30, ["p/gw/+/telemetry"]),
    (None, "events", 7 * 24 * 3600, 30, ["p/gw/+/alert", "p/gw/+/status", "p/gw/+/health"]),
    ("g", "telemetry", 7 * 24 * 3600, 30, ["$share/g/p/gw/+/telemetry"]),
    ("g", "events", 30, 10, ["$share/g/p/gw/+/alert", "p/gw/+/status", "$share/g/p/gw/+/health"]),
]  # fmt: skip


@pytest.mark.parametrize(("group", "lane", "expiry_s", "keepalive_s", "filters"), SESSIONS)
def test_each_lanes_session(
    group: str | None, lane: str, expiry_s: int, keepalive_s: int, filters: list[str],
    tmp_path: Path,
) -> None:  # fmt: skip
    """Under a share group the events lane's session is short-lived (the bound on a held
    alert), the telemetry lane's is not (its turn waits for the member's return)."""
    bridge = Bridge(BridgeConfig(share_group=group, prefix="p", data_dir=tmp_path), None, None)  # type: ignore[arg-type]
    settings = bridge._session_settings(lane)
    assert (settings.session_expiry_s, settings.keepalive_s) == (expiry_s, keepalive_s)
    assert [f for f, _ in settings.subscriptions] == filters
    assert settings.note_file == tmp_path / "mqtt-subscriptions" / f"gridwatch-bridge-{lane}.json"


def test_the_docs_two_bridge_layout_puts_both_bridges_in_one_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/central.md's layout of ``central run`` and one more bridge, through the real parser
    and the file's merge: one share group, two bridge ids."""
    doc = (Path(__file__).parent.parent / "docs" / "central.md").read_text(encoding="utf-8")
    section = doc.split("### Two bridges: `central run` and one more", 1)[1]
    conf = tmp_path / "central.yaml"
    conf.write_text(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    monkeypatch.setenv("MQ_BRIDGE_PW", "pw")
    monkeypatch.setenv("GRIDWATCH_DB_URL", "postgresql+asyncpg://gridwatch@db/gridwatch")
    commands = [shlex.split(line)[1:] for line in section.split("```sh\n", 1)[1].split("```")[0]
                .splitlines() if line.startswith("gridwatch ")]  # fmt: skip
    assert [c[:2] for c in commands] == [["central", "run"], ["bridge", "run"]]
    cfgs = [
        BridgeConfig.from_args(build_parser().parse_args(
            [str(conf) if a == "/etc/gridwatch/central.yaml" else a for a in argv]))
        for argv in commands
    ]  # fmt: skip
    assert [c.share_group for c in cfgs] == ["ingest", "ingest"]
    assert len({c.client_id for c in cfgs}) == 2


# ---- on the broker ---------------------------------------------------------------------------


async def any_until(
    bridges: tuple[Bridge, ...], done: Callable[[], bool], within_s: float = 10
) -> None:
    """Until ``done`` holds, looked at after each step of any of ``bridges``."""
    waiters = [asyncio.create_task(b.until(lambda _: done(), live=True)) for b in bridges]
    try:
        async with asyncio.timeout(within_s):
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


@pytest.mark.parametrize(
    ("before", "after", "lose_note"),
    [(None, "g", False), (None, "g", True), ("g1", "g2", False)],
    ids=["plain then shared", "plain then shared, note lost", "another group"],
)
async def test_a_bridge_moved_into_a_share_group_takes_only_its_turn(
    mosquitto: Mosquitto, store: RegistryStore, sink: SqliteSink, prefix: str, tmp_path: Path,
    before: str | None, after: str, lose_note: bool,
) -> None:  # fmt: skip
    """Issue 17 as filed: a bridge run once without ``--share-group`` (or in another group),
    then with it beside a second member. Its resumed session still held the old subscription,
    so it took the whole stream besides its turn: every message was delivered 1.5 times."""
    gw, t, n = prefix, now_ms(), 40
    first = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path / "b1",
                          client_id=f"{prefix}-1", share_group=before)  # fmt: skip
    async with bridge_on(first, store, sink):
        pass  # subscribed, then stopped: its persistent sessions stay at the broker
    if lose_note:  # a data dir that was not kept: only the plain forms can be guessed
        shutil.rmtree(tmp_path / "b1" / "mqtt-subscriptions")
    second = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path / "b2",
                           client_id=f"{prefix}-2", share_group=after)  # fmt: skip
    async with (
        bridge_on(replace(first, share_group=after), store, sink) as b1,
        bridge_on(second, store, sink) as b2,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        for seq in range(1, n + 1):
            msg = batch(gw, [reading("d1", "level", float(seq), t + seq)], seq=seq)
            await pub.publish(Topics(prefix).telemetry(gw), msg.model_dump_json(), qos=1)
        bridges = (b1, b2)
        await any_until(
            bridges, lambda: sum(b.committed.ingested["telemetry"] for b in bridges) == n
        )
    assert b1.stats.received + b2.stats.received == n  # each message delivered once in all
    assert b1.stats.duplicates + b2.stats.duplicates == 0
    assert b1.stats.received > 0 and b2.stats.received > 0  # both took their turn


async def expired_sessions(broker: Mosquitto, one_expired: asyncio.Event) -> None:
    """Follow the broker's count of expired sessions (``$SYS``, once a second)."""
    async with aiomqtt.Client(broker.host, broker.port) as c:
        await c.subscribe("$SYS/broker/clients/expired", qos=0)
        async for m in c.messages:
            if int(bytes(m.payload)) >= 1:  # type: ignore[arg-type]
                one_expired.set()


def raised(gateway: str, alert_id: str) -> Callable[[int], bytes]:
    """An outbox message builder: the alert raised, with the number the outbox gives it."""

    def build(seq: int) -> bytes:
        return (
            alert(gateway, alert_id, AlertState.RAISED, now_ms(), seq=seq)
            .model_dump_json()
            .encode()
        )

    return build


def online(registry: Path, gateways: list[str]) -> bool:
    with contextlib.closing(sqlite3.connect(registry)) as db:
        marks = ",".join("?" * len(gateways))
        rows = db.execute(f"SELECT id FROM gateways WHERE online AND id IN ({marks})", gateways)
        return len(rows.fetchall()) == len(gateways)


async def test_a_stopped_member_holds_no_alert_past_the_bound(
    store: RegistryStore, sink: SqliteSink, prefix: str, tmp_path: Path
) -> None:
    """Two members; one stops (a clean stop: its session's expiry starts at once). The broker
    keeps handing it its turn of the alerts until its events session expires
    (``shared_events_expiry_s``) and then drops what it queued; the gateway sends again what no
    bridge acknowledged after ``ack_timeout_s``, and the other member takes it. So an alert is on
    the platform topic within expiry + ack timeout (+ the time to notice a hung member), once.

    The first part (alerts through a real gateway's outbox) shows the bound end to end; mosquitto
    alternates strictly, so a resend often reaches the live member before the expiry anyway. The
    second part is what the expiry itself guarantees, and what fails without it: past it, an
    alert sent once, never again, reaches the platform all the same (with the 7-day session, every
    other one waits in the stopped member's queue). And Birth and Death, which no gateway sends
    again, are taken whole by every member: none is lost with the stopped member's session."""
    expiry_s, ack_timeout_s = 2, 1.0
    bound_s = expiry_s + 1 + ack_timeout_s + 1  # the broker looks at expiries once a second,
    slack_s = 4.0  # the gateway at its unacknowledged messages once a second; a busy machine
    broker = Mosquitto(tmp_path / "mq", extra=["sys_interval 1"]).start()
    topics = Topics(prefix)
    cfg, devices, _ = gateway_config(tmp_path, broker.port, prefix, ack_timeout_s=ack_timeout_s)
    gw = cfg.gateway.id
    members = [bridge_config(broker.host, broker.port, prefix, tmp_path / f"b{i}",
                             client_id=f"{prefix}-{i}", share_group="g",
                             shared_events_expiry_s=expiry_s) for i in (1, 2)]  # fmt: skip
    expired = asyncio.Event()
    watcher = asyncio.create_task(expired_sessions(broker, expired))
    try:
        async with (
            listen(broker.port, f"{prefix}/platform/#") as platform,
            bridge_on(members[0], store, sink),
            SimField(devices, update_s=0.2),
            running(cfg, devices) as agent,
            publisher(broker.host, broker.port) as pub,
        ):

            def on_platform() -> list[str]:
                """The alerts on the platform topics, by their id at the gateway."""
                return [doc["alert_id"].split(":", 1)[1] for topic, doc, _ in platform.messages
                        if "/platform/alert/" in topic]  # the platform's id is GATEWAY:ID  # fmt: skip

            async with bridge_on(members[1], store, sink):
                await agent.uplink.wait_until(lambda u: u.connected, within_s=20)
            # the second member is gone; the broker still hands it every other alert
            stopped = time.monotonic()
            ids = [f"{prefix}-a{i}" for i in range(4)]
            for alert_id in ids:  # through the gateway's outbox: sent again until acknowledged
                agent.outbox.enqueue(PRIO_ALERT, "alert", topics.alert(gw), raised(gw, alert_id))
            # two gateways' Births, one after the other: one is the stopped member's turn
            # unless every member takes status whole
            others = [f"{prefix}-x", f"{prefix}-y"]
            for other in others:
                await pub.publish(
                    topics.status(other), birth(other, 1, ["d1"]).model_dump_json(), qos=1
                )
            await platform.wait_for(lambda _: set(on_platform()) >= set(ids),
                                    within_s=bound_s + slack_s)  # fmt: skip
            took = time.monotonic() - stopped
            assert sorted(a for a in on_platform() if a in ids) == sorted(ids)  # once each
            print(f"alerts of a stopped member's turn on the platform after {took:.1f} s "
                  f"(bound {bound_s} s)")  # fmt: skip

            # past the expiry the broker queues nothing for it: every alert goes to the other
            async with asyncio.timeout(bound_s + slack_s):
                await expired.wait()
            raw = [alert(f"{prefix}-raw", f"{prefix}-r{i}", AlertState.RAISED, now_ms(), seq=i + 1)
                   for i in range(6)]  # fmt: skip
            for a in raw:  # sent once, never again: only the live member can take them
                await pub.publish(topics.alert(a.gateway), a.model_dump_json(), qos=1)
            await platform.wait_for(lambda _: {a.alert_id for a in raw} <= set(on_platform()),
                                    within_s=5)  # fmt: skip
            # a Birth lost with the session never comes
            await until_true(
                "both Births applied", lambda: online(tmp_path / "registry.db", others), 5
            )
            mine = [a for a in on_platform() if a in {r.alert_id for r in raw}]
            assert sorted(mine) == sorted(r.alert_id for r in raw)  # once each
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        broker.stop()


async def test_a_gap_filled_by_a_member_back_late_is_withdrawn(
    mosquitto: Mosquitto, store: RegistryStore, sink: SqliteSink, prefix: str, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    """One member is stopped while a stream flows: its turn waits in its telemetry session, and
    the other member's audit reports those numbers as never arrived. When it is back it
    ingests them, and the report is withdrawn: counted missing no more, here and in the
    registry, and said at INFO."""
    caplog.set_level(logging.INFO, logger="cloud_bridge.bridge")
    gw, t, n = prefix, now_ms(), 10
    members = [bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path / f"b{i}",
                             client_id=f"{prefix}-{i}", share_group="g", gap_audit_s=0.2,
                             gap_settle_s=0.4) for i in (1, 2)]  # fmt: skip
    async with (
        bridge_on(members[0], store, sink) as b1,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        async with bridge_on(members[1], store, sink):
            pass  # a member, then stopped: its turn of the stream waits in its session
        for seq in range(1, n + 1):
            msg = batch(gw, [reading("d1", "level", float(seq), t + seq)], seq=seq)
            await pub.publish(Topics(prefix).telemetry(gw), msg.model_dump_json(), qos=1)
        await any_until((b1,), lambda: b1.stats.missing > 0)
        async with bridge_on(members[1], store, sink) as b2:
            both = (b1, b2)
            await any_until(both, lambda: sum(b.committed.ingested["telemetry"] for b in both) == n)
            await any_until(both, lambda: b1.stats.missing + b2.stats.missing == 0)
    assert b1.stats.repaired > 0 and b1.stats.gaps + b2.stats.gaps == 0  # all withdrawn
    assert "reported never arrived came after all" in caplog.text
    with contextlib.closing(sqlite3.connect(tmp_path / "registry.db")) as db:
        (missing,) = db.execute(
            "SELECT missing FROM seq_audit WHERE gateway = ? AND stream = 'telemetry'", (gw,)
        ).fetchone()
    assert missing == 0
