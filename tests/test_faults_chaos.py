"""Chaos: a seeded random schedule of the faults of test_faults_crash.py for about two minutes,
then the same count: every poll the field answered is in the time-series store, once.

The seed comes from ``GRIDWATCH_CHAOS_SEED`` (or is drawn at random), is printed at the start
with the whole schedule, and is in every assertion message: a failure is replayed with
``GRIDWATCH_CHAOS_SEED=<seed> .venv/bin/python -m pytest tests/test_faults_chaos.py``. The
schedule is drawn before anything runs, so one seed always gives the same faults in the same
order with the same durations (the wall clock between them varies with the machine).

Faults, one after the other, with readings flowing between them: the broker crashed (SIGKILL)
or stopped, each either with the centre back before the gateway or held until after it; a
bridge SIGKILLed (one of two on a shared subscription) or held (SIGSTOP) for a while; the
gateway SIGKILLed; once at most, a failover (two brokers, both known to the gateway and the
bridges; the one in use SIGKILLed for good). Bridges are killed, so VictoriaMetrics runs with its own dedup, as in
production (docs/central.md).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests._faults_helpers import (
    Rig,
    centre_back_late,
    end,
    flow,
    gateway_yaml,
    running_rig,
    services,
    until_true,
)

CHAOS_S = 120.0
"""Planned length of the schedule (faults and flow); the wall time adds start, waits and the
final drain, about a minute on a quiet 2-core machine."""

KINDS = ("broker_crash", "broker_stop", "bridge_kill", "bridge_hold", "edge_kill", "failover")
"""``failover``: the second broker starts, the first is SIGKILLed for good and everyone moves
over (drawn once at most). One broker runs at a time: two independent mosquittos are not a
cluster, and a gateway on one with the centre on the other would reach nobody."""


@dataclass(frozen=True)
class Fault:
    kind: str
    centre_late: bool  # broker faults: the bridges are held through it, back after the gateway
    down_s: float  # how long the broker is down, or the process dead or held
    lag_s: float  # centre_late: how long after the gateway the centre returns
    then_s: float  # readings flowing after it
    target: str  # bridge faults: which bridge

    def __str__(self) -> str:
        late = f" centre {self.lag_s:.1f}s late" if self.centre_late else ""
        who = f" {self.target}" if self.kind.startswith("bridge") else ""
        return f"{self.kind}{who} {self.down_s:.1f}s{late}, flow {self.then_s:.1f}s"


def schedule(seed: int, length_s: float = CHAOS_S) -> list[Fault]:
    rng = random.Random(seed)
    out: list[Fault] = []
    planned = 0.0
    while planned < length_s:
        kind = rng.choice(KINDS)
        if kind == "failover" and any(f.kind == "failover" for f in out):
            continue
        fault = Fault(
            kind=kind, centre_late=kind.startswith("broker") and rng.random() < 0.6,
            down_s=round(rng.uniform(1.0, 8.0), 1), lag_s=round(rng.uniform(1.0, 4.0), 1),
            then_s=round(rng.uniform(0.5, 4.0), 1), target=rng.choice(("bridge", "bridge-b")),
        )  # fmt: skip
        out.append(fault)
        planned += fault.down_s + fault.then_s + (fault.lag_s if fault.centre_late else 0)
    return out


def chaos_seed() -> int:
    given = os.environ.get("GRIDWATCH_CHAOS_SEED")
    return int(given) if given else random.SystemRandom().randrange(2**32)


async def apply(rig: Rig, fault: Fault) -> None:
    if fault.kind in ("broker_crash", "broker_stop"):
        sig = signal.SIGKILL if fault.kind == "broker_crash" else signal.SIGTERM
        if fault.centre_late:
            await centre_back_late(rig, sig, fault.down_s, fault.lag_s)
        else:
            end(rig, sig)
            await flow(fault.down_s)
            rig.broker.start()
    elif fault.kind == "failover":
        assert rig.standby is not None
        rig.standby.start()
        end(rig, signal.SIGKILL)  # for good: the standby is now the broker
        rig.broker, rig.standby = rig.standby, rig.broker
        await flow(fault.down_s)
    elif fault.kind == "bridge_kill":
        rig.stop(fault.target, signal.SIGKILL)
        await flow(fault.down_s)
        await asyncio.to_thread(rig.start, fault.target)
    elif fault.kind == "bridge_hold":
        rig.pause(fault.target)
        await flow(fault.down_s)
        rig.resume(fault.target)
    elif fault.kind == "edge_kill":
        rig.stop("edge", signal.SIGKILL)
        await flow(fault.down_s)
        await asyncio.to_thread(rig.start, "edge")
        await until_true("the gateway is connected again", rig.uplink_connected)
    await flow(fault.then_s)


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_chaos(tmp_path: Path, prefix: str) -> None:
    seed = chaos_seed()
    replay = f" [replay: GRIDWATCH_CHAOS_SEED={seed}]"
    plan = schedule(seed)
    print(f"chaos seed {seed}: {len(plan)} faults")
    for i, fault in enumerate(plan):
        print(f"  {i:2d} {fault}")
    edge_kills = sum(f.kind == "edge_kill" for f in plan)
    with services(tmp_path, persistent=True, vm_dedup=True, brokers=2) as (mqs, vm):
        path = gateway_yaml(tmp_path, prefix, mqs)
        mqs[1].stop()  # the standby starts at the failover
        rig = Rig(tmp_path, prefix, mqs[0], vm, path, standby=mqs[1], share_group=f"g{prefix}")
        async with running_rig(rig, bridges=("bridge", "bridge-b")):
            t0 = time.monotonic()
            for i, fault in enumerate(plan):
                try:
                    await apply(rig, fault)
                except AssertionError as exc:
                    raise AssertionError(f"fault {i} ({fault}): {exc}{replay}") from exc
            print(f"chaos: {len(plan)} faults in {time.monotonic() - t0:.0f}s")
            await rig.settle(edge_kills=edge_kills, within_s=120, replay=replay)
            figures = await rig.check_store(edge_kills=edge_kills, replay=replay)
    print(f"chaos seed {seed}: {figures}")


@pytest.mark.parametrize("seed", [0, 1, 2**31 + 7])
def test_a_seed_gives_one_bounded_schedule(seed: int) -> None:
    plan = schedule(seed)
    assert plan == schedule(seed)  # replayable
    planned = sum(f.down_s + f.then_s + (f.lag_s if f.centre_late else 0) for f in plan)
    assert CHAOS_S <= planned < CHAOS_S + 8 + 4 + 4  # one fault past the length at most
    assert all(f.kind in KINDS and 1.0 <= f.down_s <= 8.0 for f in plan)
