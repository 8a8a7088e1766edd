"""The untidy faults, end to end: nothing lost, nothing stored twice (issue 11).

A broker that *crashes* (SIGKILL) forgets every session, subscription and queued message since
its last save; one restarted without persistence starts empty. If the gateway is back before the
centre, its replay then reaches nobody, and a gateway that deleted each message at the broker's
PUBACK has nothing left to send. Here the whole chain runs as processes (tests/_faults_helpers.py)
and the count is made where it matters, in the time-series store: every number each water-level
sensor served is stored, once.

"The centre back late" is a bridge held with SIGSTOP while the broker goes down and released
a few seconds after the gateway is connected again (and has replayed): a centre on the far side of
a network that is slower to recover. A bridge SIGKILLed between its write to the store and its
registry commit writes that step again when the broker redelivers it; production runs
VictoriaMetrics with `-dedup.minScrapeInterval=1ms` for that (docs/central.md), and so do the
tests that kill a bridge.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests._faults_helpers import (
    CENTRE_LAG_S,
    Rig,
    centre_back_late,
    end,
    flow,
    gateway_yaml,
    kill_bridge_once_ingesting,
    running_rig,
    services,
    until_true,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]


async def test_broker_crash_with_the_centre_back_late(tmp_path: Path, prefix: str) -> None:
    """Issue 11 as filed: persistence on, mosquitto SIGKILLed, the centre back after the edge."""
    with services(tmp_path, persistent=True) as (mqs, vm):
        rig = Rig(tmp_path, prefix, mqs[0], vm, gateway_yaml(tmp_path, prefix, mqs))
        async with running_rig(rig):
            await flow(3)
            await centre_back_late(rig, signal.SIGKILL)
            await flow(3)
            await rig.settle()
            figures = await rig.check_store()
    print(figures)


async def test_broker_restarted_empty_with_the_centre_back_late(
    tmp_path: Path, prefix: str
) -> None:
    """No persistence: a clean stop and start leaves the broker with no session at all."""
    with services(tmp_path, persistent=False) as (mqs, vm):
        rig = Rig(tmp_path, prefix, mqs[0], vm, gateway_yaml(tmp_path, prefix, mqs))
        async with running_rig(rig):
            await flow(3)
            await centre_back_late(rig, signal.SIGTERM)
            await flow(3)
            await rig.settle()
            figures = await rig.check_store()
    print(figures)


async def test_edge_killed_with_unacknowledged_messages_then_the_broker_crashes(
    tmp_path: Path, prefix: str
) -> None:
    """The centre is away, so what the gateway sent is acknowledged by the broker only; the
    gateway is SIGKILLed, the broker crashes, and both come back before the centre."""
    with services(tmp_path, persistent=True) as (mqs, vm):
        rig = Rig(tmp_path, prefix, mqs[0], vm, gateway_yaml(tmp_path, prefix, mqs))
        async with running_rig(rig):
            await flow(3)
            rig.pause("bridge")
            await flow(4)  # published and PUBACKed; the centre has seen none of it
            rig.stop("edge", signal.SIGKILL)
            end(rig, signal.SIGKILL)
            await flow(2)
            rig.broker.start()
            await asyncio.to_thread(rig.start, "edge")
            await until_true("the gateway is connected again", rig.uplink_connected)
            await flow(CENTRE_LAG_S)
            rig.resume("bridge")
            await flow(3)
            await rig.settle(edge_kills=1)
            figures = await rig.check_store(edge_kills=1)
    print(figures)


async def test_bridge_killed_during_a_replay(tmp_path: Path, prefix: str) -> None:
    """The broker is stopped (it saves its state); the centre is held through the outage, so
    the gateway's whole replay waits in the bridge's session; the bridge is released and
    SIGKILLed while it ingests that backlog, then started again."""
    with services(tmp_path, persistent=True, vm_dedup=True) as (mqs, vm):
        rig = Rig(tmp_path, prefix, mqs[0], vm, gateway_yaml(tmp_path, prefix, mqs))
        async with running_rig(rig):
            await flow(3)
            marks = await centre_back_late(rig, signal.SIGTERM)
            await kill_bridge_once_ingesting(rig, "bridge", marks["bridge"])
            await flow(2)
            await asyncio.to_thread(rig.start, "bridge")
            await flow(2)
            await rig.settle()
            figures = await rig.check_store()
    print(figures)


async def test_one_of_two_shared_bridges_killed_during_a_replay(
    tmp_path: Path, prefix: str
) -> None:
    """Two bridges on an MQTT 5 shared subscription; one is SIGKILLed while they ingest a
    replay and comes back two seconds later (its unacknowledged share waits in its session)."""
    with services(tmp_path, persistent=True, vm_dedup=True) as (mqs, vm):
        path = gateway_yaml(tmp_path, prefix, mqs)
        rig = Rig(tmp_path, prefix, mqs[0], vm, path, share_group=f"g{prefix}")
        async with running_rig(rig, bridges=("bridge", "bridge-b")):
            await flow(3)
            marks = await centre_back_late(rig, signal.SIGTERM)
            await kill_bridge_once_ingesting(rig, "bridge-b", marks["bridge-b"])
            await flow(2)
            await asyncio.to_thread(rig.start, "bridge-b")
            await flow(2)
            await rig.settle()
            figures = await rig.check_store()
    print(figures)


async def test_failover_to_the_second_broker_when_the_first_crashes(
    tmp_path: Path, prefix: str
) -> None:
    """Two brokers; the gateway (``mqtt.endpoints``) and the bridge (``--mqtt-host A,B``) know
    both. A is SIGKILLed: both move to B, whoever gets there first, and what the gateway had
    handed to A and what it sends to B before the bridge subscribes there are not lost."""
    with services(tmp_path, persistent=True, brokers=2) as (mqs, vm):
        path = gateway_yaml(tmp_path, prefix, mqs)
        rig = Rig(tmp_path, prefix, mqs[0], vm, path, standby=mqs[1])
        async with running_rig(rig):
            await flow(3)
            rig.pause("bridge")  # A dies with what it held for the centre
            await flow(2)
            log, mark = rig.log("edge"), rig.log("edge").stat().st_size
            on_b = f"on {mqs[1].host}:{mqs[1].port}".encode()
            end(rig, signal.SIGKILL)
            await until_true("the gateway is on broker B", lambda: on_b in log.read_bytes()[mark:])
            await flow(CENTRE_LAG_S)
            rig.resume("bridge")
            await flow(4)
            await rig.settle()
            figures = await rig.check_store()
    print(figures)
