"""The fault tests' rig: the whole chain as processes, and the count of every poll.

`gridwatch sim` (the field), `gridwatch edge run` (the gateway), one or two `gridwatch bridge run`
(ingest, with the registry on SQLite) and real mosquitto and VictoriaMetrics, which the tests
stop, kill, pause and restart. Each water-level sensor of the field serves the next number of a
read counter on every read; the simulator logs how many reads it served as it stops. Two counts
are made of that:

- ``Rig.check`` (tests/test_faults.py): what the *broker* delivered, seen by a watcher with a
  persistent session, plus the telemetry sequence numbers and the alert transitions. A broker
  crash wipes the watcher's session too, so the crash tests do not use it;
- ``Rig.check_store`` (tests/test_faults_crash.py, the chaos test): what the *time-series store*
  holds, end to end: the counter values stored for each sensor must be 1..N, each once, where N
  is what the simulator served. A hole is allowed only for a poll the gateway itself counted as
  failed (it gave up waiting, then the answer came) and, per edge SIGKILL, for the one read in
  flight at the kill. No sample (device, point, time) may be stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import yaml

from gridwatch.ground.contract import TelemetryBatch
from tests._central_helpers import end_all, wait_for_log
from tests.fieldkit import CABINET
from tests.services import Mosquitto, Victoria, free_port
from tests.test_metrics import scrape

STARTUP_S = 120.0
"""A process's start-up, mostly imports: a few CPU seconds, ten times that on a busy machine."""

BRIDGES = ("bridge", "bridge-b")
"""Process names of the bridges: a second one joins the first on a shared subscription."""


def spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gridwatch.top.cli", *args], stdout=out, stderr=subprocess.STDOUT
        )


@dataclass
class Rig:
    work: Path
    prefix: str
    broker: Mosquitto
    vm: Victoria
    config: Path
    standby: Mosquitto | None = None
    """A second broker the gateway and the bridges also know (failover), or None."""
    share_group: str | None = None
    """Set: the bridges subscribe as members of this MQTT 5 shared-subscription group."""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    paused: set[str] = field(default_factory=set)
    metrics_port: int = field(default_factory=free_port)  # the edge's: uplink state, failed polls
    batches: dict[str, dict[str, Any]] = field(default_factory=dict)  # by message id
    watcher_up: asyncio.Event = field(default_factory=asyncio.Event)
    edge_failures: dict[str, int] = field(default_factory=dict)
    """Failed polls per device counted by edge processes that have ended."""
    _failures_now: dict[str, int] = field(default_factory=dict)  # the running edge's, scraped
    _failures_frozen: bool = False

    gateway = "gw-xuhui-01"

    def log(self, name: str) -> Path:
        return self.work / f"{name}.log"

    def brokers(self) -> list[Mosquitto]:
        return [self.broker] if self.standby is None else [self.broker, self.standby]

    def start(self, name: str) -> None:
        log = self.log(name)
        start = log.stat().st_size if log.exists() else 0
        if name == "sim":
            # events 5x faster: an alert is raised and cleared while the faults happen
            self.procs[name] = spawn(["sim", "-c", str(self.config), "--speedup", "5"], log)
            wait_for_log(self.procs[name], log, b"sim: serving", start, STARTUP_S)
        elif name == "edge":
            self._edge_ended()
            self.procs[name] = spawn(
                ["edge", "run", "-c", str(self.config), "--metrics-port", str(self.metrics_port)],
                log,
            )
            wait_for_log(self.procs[name], log, b"edge agent", start, STARTUP_S)
        elif name in BRIDGES:
            self.procs[name] = spawn(["bridge", "run", *self.bridge_args(name)], log)
            wait_for_log(self.procs[name], log, b"bridge subscribed", start, STARTUP_S)

    def bridge_args(self, name: str) -> list[str]:
        b = self.broker
        hosts = ",".join(f"{m.host}:{m.port}" for m in self.brokers())  # failover: in turn
        args = ["--mqtt-host", hosts, "--mqtt-port", str(b.port), "--prefix", self.prefix,
                "--influx-url", self.vm.url, "--data-dir", str(self.work / "central"),
                "--bridge-id", f"{name}-{self.prefix}"]  # fmt: skip
        if self.share_group:
            args += ["--share-group", self.share_group, "--mqtt-protocol", "5"]
        return args

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        if name in self.paused:  # a stopped process takes no SIGTERM until it runs again
            proc.send_signal(signal.SIGCONT)
            self.paused.discard(name)
        proc.send_signal(sig)
        proc.wait(15)
        if name == "edge":
            self._edge_ended()

    def pause(self, name: str) -> None:
        """SIGSTOP: the process holds its state and its sockets but does nothing (a centre
        that is slow to come back, on the far side of a network that is still down)."""
        self.procs[name].send_signal(signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        self.procs[name].send_signal(signal.SIGCONT)
        self.paused.discard(name)

    def edge_metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return scrape(f"http://127.0.0.1:{self.metrics_port}/metrics")

    def uplink_connected(self) -> bool:
        with contextlib.suppress(OSError):
            return self.edge_metrics()[("gridwatch_edge_uplink_connected", ())] == 1
        return False

    def _note_failures(self, got: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> None:
        if self._failures_frozen:
            return
        for (name, labels), value in got.items():
            if name.startswith("gridwatch_edge_poll_failures") and labels:
                self._failures_now[dict(labels)["device"]] = int(value)

    def _edge_ended(self) -> None:
        for device, n in self._failures_now.items():
            self.edge_failures[device] = self.edge_failures.get(device, 0) + n
        self._failures_now.clear()

    async def track_failures(self) -> None:
        """Scrape the running edge's failed-poll counters until cancelled (a killed edge takes
        at most the last half second's count with it; the check allows one read per kill)."""
        while True:
            if "edge" in self.procs:
                with contextlib.suppress(OSError, KeyError):
                    self._note_failures(await asyncio.to_thread(self.edge_metrics))
            await asyncio.sleep(0.5)

    def served_reads(self) -> dict[str, int]:
        """Reads of each device's counter the simulator served (logged as it stops)."""
        text = self.log("sim").read_text()
        return {d: int(n) for d, n in re.findall(r"sim: (\S+) counter served (\d+) reads", text)}

    def registry_alerts(self) -> list[tuple[str, str]]:
        with contextlib.closing(sqlite3.connect(self.work / "central" / "registry.db")) as db:
            rows = db.execute("SELECT alert_id, state FROM alert_transitions").fetchall()
        return [(str(a), str(s)) for a, s in rows]

    async def watch(self) -> None:
        """Every telemetry batch published, across broker restarts (persistent session)."""
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.broker.port, identifier=f"watch-{self.prefix}",
                    clean_session=False,
                ) as c:  # fmt: skip
                    await c.subscribe(f"{self.prefix}/gw/+/telemetry", qos=1)
                    self.watcher_up.set()
                    async for msg in c.messages:
                        payload = json.loads(bytes(msg.payload))  # type: ignore[arg-type]
                        self.batches[payload["id"]] = payload
            except aiomqtt.MqttError:
                self.watcher_up.clear()
                await asyncio.sleep(0.2)

    async def settle(self, edge_kills: int = 0, within_s: float = 90, replay: str = "") -> None:
        """Stop the field; wait until every poll it answered is in the store (the check then
        finds what is missing); stop the gateway. Not "until the outbox is empty": a gateway
        whose devices stopped answering sends their failed polls on and on, each held until the
        centre's Ack."""
        with contextlib.suppress(OSError, KeyError):
            self._note_failures(await asyncio.to_thread(self.edge_metrics))
        self._failures_frozen = True  # the failures of a field that is gone allow no hole
        self.stop("sim")
        deadline = time.monotonic() + within_s
        while await asyncio.to_thread(self._shortfall, edge_kills):
            if time.monotonic() > deadline:
                self.stop("edge")
                raise AssertionError(
                    f"not every poll stored {within_s:.0f}s after the field stopped: "
                    f"{self._shortfall(edge_kills)}; the outbox still holds "
                    f"{self.outbox_left()}{replay}"
                )
            await asyncio.sleep(0.5)
        self.stop("edge")

    def outbox_left(self) -> str:
        """What a stopped edge's outbox still holds, by stream and state (for a failure)."""
        path = yaml.safe_load(self.config.read_text())["outbox"]["path"]
        with contextlib.closing(sqlite3.connect(path)) as db:
            cols = {r[1] for r in db.execute("PRAGMA table_info(outbox)")}
            if "state" not in cols:
                return str(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
            rows = db.execute(
                "SELECT stream, state, COUNT(*), MIN(seq), MAX(seq) FROM outbox "
                "GROUP BY stream, state"
            ).fetchall()
        return "; ".join(f"{st} {state}: {n} (seq {a}..{b})" for st, state, n, a, b in rows)

    # ---- the count at the broker (a watcher's persistent session) ----------------------------

    async def check(self, within_s: float = 30, edge_kills: int = 0) -> dict[str, int]:
        batches = [TelemetryBatch.model_validate(b) for b in self.batches.values()]
        seqs = sorted(b.seq for b in batches)
        assert seqs == list(range(1, len(seqs) + 1)), "a telemetry batch went missing"
        polls = self._check_every_poll(batches, edge_kills)
        sent: dict[tuple[str, str, int], float] = {}
        for b in batches:
            for r in b.readings:
                if isinstance(r.value, int | float):
                    key = (r.device, r.point, r.ts)
                    assert key not in sent, f"the gateway published {key} in two batches"
                    sent[key] = float(r.value)
        deadline = time.monotonic() + within_s
        while True:
            stored = await asyncio.to_thread(self._stored)
            missing = set(sent) - set(stored)
            if not missing:
                break
            assert time.monotonic() < deadline, f"{len(missing)} readings never reached the store"
            await asyncio.sleep(0.5)
        doubled = {k: n for k, (_, n) in stored.items() if n > 1}
        assert not doubled, f"{len(doubled)} samples stored more than once"
        # VictoriaMetrics keeps 12 significant digits
        wrong = {
            k: (v, stored[k][0])
            for k, v in sent.items()
            if not math.isclose(stored[k][0], v, rel_tol=1e-11)
        }
        assert not wrong, f"stored values differ: {list(wrong.items())[:5]}"
        transitions = self.registry_alerts()
        assert len(transitions) == len(set(transitions)), "an alert transition was doubled"
        return {"batches": len(seqs), "readings": len(sent), "polls": polls,
                "alert_transitions": len(transitions)}  # fmt: skip

    def _check_every_poll(self, batches: list[TelemetryBatch], edge_kills: int) -> int:
        served = self.served_reads()
        assert served, "the simulator logged no read counters"
        arrived: dict[str, list[int]] = {d: [] for d in served}
        failed = dict.fromkeys(served, 0)
        for b in batches:
            for r in b.readings:
                if r.point == "counter" and r.device in served:
                    if isinstance(r.value, int):
                        arrived[r.device].append(r.value)
                    elif r.quality == "comm_error":
                        failed[r.device] += 1
        for device, n in served.items():
            got = arrived[device]
            assert len(got) == len(set(got)), f"{device}: a poll arrived twice"
            missing = sorted(set(range(1, n + 1)) - set(got))
            # a poll the gateway reported failed may have been answered after it gave up; a
            # SIGKILL may catch one read between the answer and the journal
            assert len(missing) <= failed[device] + edge_kills, (
                f"{device}: {len(missing)} of {n} polls never arrived: {missing[:20]} "
                f"({failed[device]} failed polls, {edge_kills} edge kills)"
            )
        return sum(len(v) for v in arrived.values())

    def _stored(self) -> dict[tuple[str, str, int], tuple[float, int]]:
        out: dict[tuple[str, str, int], tuple[float, int]] = {}
        for s in self.vm.export(f'gridwatch_value{{gateway="{self.gateway}"}}'):
            m = s["metric"]
            for ts, v in zip(s["timestamps"], s["values"], strict=True):
                key = (m["device"], m["point"], ts)
                out[key] = (v, out.get(key, (0.0, 0))[1] + 1)
        return out

    # ---- the count in the time-series store, end to end --------------------------------------

    def _shortfall(self, edge_kills: int) -> dict[str, str]:
        """Devices with more polls missing from the store than allowed, said for a person."""
        served = self.served_reads()
        counts, _ = self._stored_counters()
        out = {}
        for d, n in served.items():
            missing = sorted(set(range(1, n + 1)) - set(counts[d]))
            failed = self.edge_failures.get(d, 0)
            if len(missing) > failed + edge_kills:
                out[d] = (f"{len(missing)} of {n} polls missing from the store, e.g. "
                          f"{missing[:12]} (allowed {failed + edge_kills}: {failed} failed "
                          f"polls, {edge_kills} edge kills)")  # fmt: skip
        return out

    async def check_store(self, edge_kills: int = 0, replay: str = "") -> dict[str, int]:
        """After ``settle``: every poll the field answered is stored once (see the module
        docstring). ``replay`` goes into every assertion message (the chaos test's seed)."""
        served = self.served_reads()
        assert served, f"the simulator logged no read counters{replay}"
        short = await asyncio.to_thread(self._shortfall, edge_kills)
        assert not short, "\n".join(f"{d}: {why}" for d, why in short.items()) + replay
        counts, doubled = await asyncio.to_thread(self._stored_counters)
        twice = {d: sorted(v for v, k in counts[d].items() if k > 1) for d in served}
        twice = {d: v for d, v in twice.items() if v}
        assert not twice, f"polls stored more than once: {twice}{replay}"
        assert not doubled, f"{len(doubled)} samples stored more than once{replay}"
        transitions = self.registry_alerts()
        assert len(transitions) == len(set(transitions)), f"an alert transition doubled{replay}"
        stored = sum(sum(c.values()) for c in counts.values())
        return {"served": sum(served.values()), "stored": stored,
                "failed_polls": sum(self.edge_failures.values()),
                "alert_transitions": len(transitions)}  # fmt: skip

    def _stored_counters(self) -> tuple[dict[str, Counter[int]], list[tuple[str, str, int]]]:
        """Each device's stored counter values (how often each), and every (device, point,
        time) sample stored more than once, whichever series (quality) it landed in."""
        counts: dict[str, Counter[int]] = {}
        samples: Counter[tuple[str, str, int]] = Counter()
        for s in self.vm.export(f'gridwatch_value{{gateway="{self.gateway}"}}'):
            m = s["metric"]
            for ts, v in zip(s["timestamps"], s["values"], strict=True):
                samples[(m["device"], m["point"], ts)] += 1
                if m["point"] == "counter":
                    counts.setdefault(m["device"], Counter())[int(v)] += 1
        for d in self.served_reads():
            counts.setdefault(d, Counter())
        return counts, [k for k, n in samples.items() if n > 1]


def gateway_yaml(work: Path, prefix: str, brokers: list[Mosquitto], interval_s: float = 0.5,
                 **mqtt: Any) -> Path:  # fmt: skip
    """The test cabinet, polled every ``interval_s``, publishing to its broker (several:
    ``mqtt.endpoints``, in turn)."""
    cfg = yaml.safe_load(CABINET.read_text())
    # the centre's Ack missed (the centre away): sent again after 5 s, not the production 15 s,
    # so that a drain takes seconds, not minutes
    cfg["mqtt"].update({"prefix": prefix, "batch_max": 50, "batch_linger_s": 0.1,
                        "ack_timeout_s": 5, **mqtt})  # fmt: skip
    if len(brokers) == 1:
        cfg["mqtt"]["port"] = brokers[0].port
    else:
        del cfg["mqtt"]["host"], cfg["mqtt"]["port"]
        cfg["mqtt"]["endpoints"] = [{"host": b.host, "port": b.port} for b in brokers]
    cfg["outbox"]["path"] = str(work / "edge" / "outbox.db")
    cfg["health_interval_s"] = 5
    port = free_port()
    for bus in cfg["buses"]:
        bus.update({"port": port, "timeout_s": min(0.3, interval_s * 0.6)})
    for dev in cfg["devices"]:
        dev["interval_s"] = interval_s
    path = work / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def edit_gateway(path: Path, **mqtt: Any) -> None:
    cfg = yaml.safe_load(path.read_text())
    cfg["mqtt"].update(mqtt)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


@contextlib.contextmanager
def services(work: Path, persistent: bool = True, vm_dedup: bool = False,
             brokers: int = 1) -> Iterator[tuple[list[Mosquitto], Victoria]]:  # fmt: skip
    """Brokers and a VictoriaMetrics of the test's own. A persistent broker saves only on a
    clean stop (autosave once an hour): a SIGKILL loses what it held in memory, as a crash does."""
    extra = ["autosave_interval 3600"] if persistent else []
    mqs = [Mosquitto(work / f"mq{i}", persistent=persistent, extra=list(extra)).start()
           for i in range(brokers)]  # fmt: skip
    vm = Victoria(work / "vm", extra_args=["-dedup.minScrapeInterval=1ms"] if vm_dedup else [])
    try:
        vm.start()
        yield mqs, vm
    finally:
        for mq in mqs:
            mq.stop()
        vm.stop()


@contextlib.asynccontextmanager
async def running_rig(
    rig: Rig, watch: bool = False, bridges: tuple[str, ...] = ("bridge",)
) -> AsyncIterator[Rig]:
    """Start the watcher (``watch``), the bridges, the field and the gateway; on exit kill what
    still runs."""
    tasks = [asyncio.create_task(rig.track_failures())]
    if watch:
        tasks.append(asyncio.create_task(rig.watch()))
    try:
        if watch:
            await asyncio.wait_for(rig.watcher_up.wait(), 10)
        for name in (*bridges, "sim", "edge"):
            await asyncio.to_thread(rig.start, name)
        # the scenario's clock starts once readings flow to the broker (a busy machine may take
        # seconds between the agent's start and its first connection)
        await until_true("the gateway is connected", rig.uplink_connected, STARTUP_S)
        yield rig
    finally:
        for t in tasks:
            t.cancel()
        procs = list(rig.procs.values())
        try:
            for name in list(rig.procs):
                rig.stop(name, signal.SIGKILL)
        finally:  # one that would not stop must not leave the others running
            end_all(procs)


async def until_true(what: str, check: Any, within_s: float = 20) -> None:
    """Poll a blocking ``check()`` (another process's state) until it is true."""
    deadline = time.monotonic() + within_s
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"{what}: not within {within_s}s"
        await asyncio.sleep(0.1)


OUTAGE_S = 8.0
CENTRE_LAG_S = 4.0


async def flow(seconds: float) -> None:
    """Let readings flow for a while (the field polls every 0.5 s): the scenario's clock."""
    await asyncio.sleep(seconds)


async def centre_back_late(
    rig: Rig, end_broker: signal.Signals, outage_s: float = OUTAGE_S, lag_s: float = CENTRE_LAG_S
) -> dict[str, int]:
    """The broker ends with ``end_broker`` while the centre is held; it starts again after an
    outage, and the centre follows ``lag_s`` after the gateway is connected again.
    Returns where each bridge's log stood when it was held."""
    marks = {}
    for name in [n for n in rig.procs if n in BRIDGES]:
        marks[name] = rig.log(name).stat().st_size
        rig.pause(name)
    end(rig, end_broker)
    await flow(outage_s)
    rig.broker.start()
    await until_true("the gateway is connected again", rig.uplink_connected)
    await flow(lag_s)  # the gateway replays the outage while the centre is away
    for name in list(rig.paused):
        rig.resume(name)
    return marks


def end(rig: Rig, sig: signal.Signals) -> None:
    """End the broker with ``sig`` (SIGKILL: a crash; SIGTERM: a clean stop, which saves)."""
    proc = rig.broker.proc
    assert proc is not None
    proc.send_signal(sig)
    proc.wait(10)
    rig.broker.proc = None


async def kill_bridge_once_ingesting(rig: Rig, name: str, mark: int) -> None:
    """SIGKILL bridge ``name`` once it is subscribed again after being released (its log past
    ``mark``), and so is taking the backlog the broker kept for it."""
    log = rig.log(name)

    def back() -> bool:
        return log.read_bytes()[mark:].count(b"bridge subscribed") >= 1

    await until_true(f"{name} subscribed again", back)
    await flow(0.3)
    rig.stop(name, signal.SIGKILL)
