"""``gridwatch sim district``: a district's gateways on one broker, one MQTT connection each.

The shell around ``gridwatch.top.sim.district`` (which says what each gateway sends and when):
each gateway is one ``MqttSession`` (the one session helper; client id ``gridwatch-edge-G``, its
own username and password when ``--credentials`` names them, as a broker with dynamic security
requires), with its Death as the last will and its Birth retained on every connect. It keeps every
message until the centre's ``Ack`` (``P/gw/G/ack``) names it, as the edge does: what was not
acknowledged is sent again after a reconnect, after ``ack_timeout_s`` (doubled while the centre
stays silent) and when a ``Repair`` asks for it, so nothing piles up at either end unnoticed. A
scripted outage cuts the socket without a DISCONNECT, so the broker publishes the will, and the
gateway comes back ``down_s`` later with a new session.

One asyncio process runs them all (aiomqtt on paho: one socket, reader and PUBACK futures per
gateway); ``--shard K/N`` runs every Nth gateway so that two processes share a district. Every
``--report-s`` it logs what it sent and what the centre acknowledged, and at the end one line
``sim district summary {json}``; ``--events FILE`` writes, as JSON lines, when each alert
transition, Birth and scripted cut left this process (a benchmark measures latency from them).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import json
import logging
import signal
import socket
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiomqtt
from pydantic import ValidationError

from gridwatch.ground.contract import DEFAULT_PREFIX, Ack, Repair, Topics
from gridwatch.ground.endpoints import parse_endpoints
from gridwatch.ground.mqttsession import MqttSession, SessionSettings, first_failure
from gridwatch.top import exits
from gridwatch.top.sim.district import (
    District,
    DistrictOptions,
    GatewayScript,
    Out,
    plan,
)

logger = logging.getLogger(__name__)

ACK_TIMEOUT_S = 15.0
"""As the edge's ``mqtt.ack_timeout_s`` default."""
RESEND_CAP_S = 300.0
WINDOW = 200
"""Messages in flight per gateway, as the edge's uplink."""
LATENCY_SAMPLES = 20_000
"""Ack latencies kept per report period (the first ones: enough for a p99)."""


@dataclass
class Stats:
    """What the whole process sent and heard, since the start and since the last report."""

    sent: Counter[str] = field(default_factory=Counter)
    readings: int = 0
    bytes: int = 0
    acked: int = 0
    resent: int = 0
    repaired: int = 0
    births: int = 0
    cuts: int = 0
    connected: int = 0
    ack_ms: list[float] = field(default_factory=list)

    def note_ack(self, ms: float) -> None:
        self.acked += 1
        if len(self.ack_ms) < LATENCY_SAMPLES:
            self.ack_ms.append(ms)

    def totals(self) -> dict[str, Any]:
        return {"messages": sum(self.sent.values()), **{k: self.sent[k] for k in sorted(self.sent)},
                "readings": self.readings, "bytes": self.bytes, "acked": self.acked,
                "resent": self.resent, "repaired": self.repaired, "births": self.births,
                "cuts": self.cuts}  # fmt: skip


def percentile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by nearest rank; None of nothing."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Events:
    """``--events FILE``: one JSON object per line, as things leave this process."""

    def __init__(self, out: IO[str] | None) -> None:
        self.out = out

    def note(self, event: str, **fields: Any) -> None:
        if self.out is not None:
            self.out.write(json.dumps({"event": event, "ms": time.time_ns() // 1_000_000,
                                       **fields}) + "\n")  # fmt: skip


def load_credentials(path: Path) -> dict[str, tuple[str, str]]:
    """``gateway,username,password`` lines (``gridwatch gateway add`` prints each gateway's)."""
    creds: dict[str, tuple[str, str]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.reader(f), 1):
            if not row or row[0].startswith("#"):
                continue
            if len(row) != 3 or not all(row):
                raise ValueError(f"{path}:{n}: expected gateway,username,password, got "
                                 f"{len(row)} field(s)")  # fmt: skip
            creds[row[0]] = (row[1], row[2])
    return creds


class SimGateway:
    """One simulated gateway: its script, its session, what the centre has not acknowledged."""

    def __init__(self, script: GatewayScript, settings: SessionSettings, topics: Topics,
                 clock: RunClock, stats: Stats, events: Events,
                 ack_timeout_s: float = ACK_TIMEOUT_S) -> None:  # fmt: skip
        self.script, self.topics, self.clock = script, topics, clock
        self.stats, self.events, self.ack_timeout_s = stats, events, ack_timeout_s
        self.id = script.gw.id
        self.pending: deque[Out] = deque()
        self.held: dict[tuple[str, int], tuple[Out, float]] = {}
        """Sent (or queued to be) and not acknowledged: (message, when last sent)."""
        self.wake = asyncio.Event()
        self.session = MqttSession(settings, f"sim {self.id}", will=self._will,
                                   farewell=self._farewell)  # fmt: skip
        self._birth = b""
        self._death = b""
        self._resend_after = ack_timeout_s
        self._cut_done = False
        self._up = False

    async def run(self) -> None:
        await first_failure(self._produce(), self.session.run(self._serve))

    # --- the script, in time ------------------------------------------------------------------

    async def _produce(self) -> None:
        while True:
            await self.clock.until(self.script.due())
            now = self.clock.now()
            for out in self.script.step(now):
                self.pending.append(out)
                self.held[(out.leaf, out.seq)] = (out, 0.0)
            self._housekeep(now)
            self.wake.set()

    def _housekeep(self, now: float) -> None:
        """Queue again what the centre did not acknowledge in time (the edge's ack timeout)."""
        if not self._up:
            return
        late = [k for k, (_, sent) in self.held.items() if 0 < sent < now - self._resend_after]
        if not late:
            return
        for key in late:
            out, _ = self.held.pop(key)
            self.held[key] = (out, 0.0)
            self.pending.append(out)
        self.stats.resent += len(late)
        self._resend_after = min(self._resend_after * 2, RESEND_CAP_S)

    # --- the connection -----------------------------------------------------------------------

    async def _will(self) -> aiomqtt.Will:
        """Waits out a scripted outage; then a new session, whose Death is the will."""
        await self.clock.until(self.script.gw.start_s)  # the ramp: not every gateway at once
        outage = self.script.gw.outage
        if outage is not None and self.script.down(self.clock.now()):
            await self.clock.until(outage[1])
        self._birth, self._death = self.script.connect(self.clock.now())
        return aiomqtt.Will(self.topics.status(self.id), self._death, qos=1, retain=True)

    async def _farewell(self, client: aiomqtt.Client) -> None:
        await client.publish(self.topics.status(self.id), self._death, qos=1, retain=True)

    async def _serve(self, client: aiomqtt.Client) -> None:
        await client.publish(self.topics.status(self.id), self._birth, qos=1, retain=True)
        self.stats.births += 1
        self.events.note("birth", gateway=self.id, session=self.script.session)
        # what the last session sent and nobody acknowledged goes first, in its order
        unsent = {(o.leaf, o.seq) for o in self.pending}
        again = [o for o, _ in sorted(self.held.values(), key=lambda h: h[0].at_s)
                 if (o.leaf, o.seq) not in unsent]  # fmt: skip
        self.pending.extendleft(reversed(again))
        self._up = True
        self.stats.connected += 1
        try:
            await first_failure(self._send(client), self._hear(client), self._cut(client))
        finally:
            self._up = False
            self.stats.connected -= 1

    async def _cut(self, client: aiomqtt.Client) -> None:
        """The scripted outage: the socket goes without a DISCONNECT, so the will goes out."""
        outage = self.script.gw.outage
        if outage is None or self._cut_done:
            await asyncio.Future()  # no outage (left): wait for the other jobs
            return
        await self.clock.until(outage[0])
        self._cut_done = True
        sock = client._client.socket()  # paho's; aiomqtt has no way to drop a connection rudely
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.stats.cuts += 1
        self.events.note("cut", gateway=self.id, session=self.script.session)
        raise aiomqtt.MqttError(f"scripted outage of {self.script.district.opts.down_s:g} s")

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            while self.pending:
                out = self.pending.popleft()
                key = (out.leaf, out.seq)
                if key not in self.held:  # acknowledged while it waited
                    continue
                del self.held[key]
                self.held[key] = (out, self.clock.now())
                await client.publish(self.topics.gateway(self.id, out.leaf), out.payload, qos=1)
                _stop_if_asked()
                self.stats.sent[out.leaf] += 1
                self.stats.readings += out.readings
                self.stats.bytes += len(out.payload)
                if out.alert is not None:
                    self.events.note("alert", gateway=self.id, alert_id=out.alert[0],
                                     state=out.alert[1])  # fmt: skip
            self.wake.clear()
            await self.wake.wait()

    async def _hear(self, client: aiomqtt.Client) -> None:
        async for msg in client.messages:
            leaf = self.topics.parse_gateway_topic(str(msg.topic))
            if leaf is None or not isinstance(msg.payload, bytes):
                continue
            try:
                if leaf[1] == "ack":
                    self._acked(Ack.model_validate_json(msg.payload))
                elif leaf[1] == "repair":
                    self._repair(Repair.model_validate_json(msg.payload))
            except ValidationError as exc:
                logger.warning("sim %s: unreadable %s from the centre ignored: %s", self.id,
                               leaf[1], exc)  # fmt: skip

    def _acked(self, ack: Ack) -> None:
        now = self.clock.now()
        for stream, runs in ack.streams.items():
            for first, last in runs:
                for seq in range(first, last + 1):
                    held = self.held.pop((stream, seq), None)
                    if held is not None and held[1] > 0:
                        self.stats.note_ack((now - held[1]) * 1000)
        self._resend_after = self.ack_timeout_s

    def _repair(self, repair: Repair) -> None:
        found = [self.held[(repair.stream, n)][0] for first, last in repair.ranges
                 for n in range(first, last + 1) if (repair.stream, n) in self.held]  # fmt: skip
        self.pending.extendleft(reversed(found))
        self.stats.repaired += len(found)
        self.wake.set()


def _stop_if_asked() -> None:
    """Raise the cancellation that Python 3.11's ``asyncio.wait_for`` (inside aiomqtt's
    ``publish``) swallows when it comes as the PUBACK does: the send loop would go on to wait for
    more work and the run never end (seen as 51 of 100 gateways hanging at a stop)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class RunClock:
    """Run seconds since ``t0_ms``, on the event loop's monotonic clock."""

    def __init__(self, t0_ms: int) -> None:
        self.t0_ms = t0_ms
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._start = loop.time() - (time.time_ns() // 1_000_000 - t0_ms) / 1000

    def now(self) -> float:
        return self._loop.time() - self._start

    async def until(self, t: float) -> None:
        await asyncio.sleep(max(0.0, t - self.now()))


@dataclass(frozen=True)
class RunOptions:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = DEFAULT_PREFIX
    protocol: str = "3.1.1"
    credentials: dict[str, tuple[str, str]] | None = None
    shard: tuple[int, int] = (0, 1)
    """(K, N): run the gateways whose index is K modulo N."""
    duration_s: float = 0.0
    """0: until cancelled."""
    report_s: float = 10.0
    ack_timeout_s: float = ACK_TIMEOUT_S


class DistrictSim:
    """The district's gateways (this shard's) on a broker: ``await sim.run()`` until the duration
    ends or the task is cancelled; ``stats`` and ``events`` meanwhile."""

    def __init__(self, district: District, run: RunOptions, t0_ms: int | None = None,
                 events: Events | None = None) -> None:  # fmt: skip
        self.district, self.opts = district, run
        self.t0_ms = t0_ms if t0_ms is not None else time.time_ns() // 1_000_000
        self.stats = Stats()
        self.events = events or Events(None)
        self.topics = Topics(run.prefix)
        k, n = run.shard
        self.plans = [g for g in district.gateways if g.index % n == k]
        missing = [g.id for g in self.plans
                   if run.credentials is not None and g.id not in run.credentials]  # fmt: skip
        if missing:
            raise ValueError(f"no credentials for {len(missing)} gateway(s), e.g. "
                             f"{', '.join(missing[:5])}")  # fmt: skip
        self.gateways: list[SimGateway] = []

    def _settings(self, gw: str) -> SessionSettings:
        endpoints = parse_endpoints(self.opts.host, self.opts.port)
        user, password = (self.opts.credentials or {}).get(gw, (None, None))
        return SessionSettings(
            endpoints=tuple(endpoints), client_id=f"gridwatch-edge-{gw}", username=user,
            password=password, protocol=self.opts.protocol,  # type: ignore[arg-type]
            persistent=False, max_inflight=WINDOW, backoff_first_s=0.05, backoff_cap_s=1.0,
            subscriptions=((self.topics.ack(gw), 1), (self.topics.repair(gw), 1)),
        )  # fmt: skip

    async def run(self) -> dict[str, Any]:
        clock = RunClock(self.t0_ms)
        self.gateways = [
            SimGateway(GatewayScript(self.district, g, self.t0_ms), self._settings(g.id),
                       self.topics, clock, self.stats, self.events, self.opts.ack_timeout_s)
            for g in self.plans
        ]  # fmt: skip
        logger.info("sim district: %d gateway(s) x %d devices (shard %d/%d), seed %d, to %s:%d",
                    len(self.gateways), self.district.opts.devices, *self.opts.shard,
                    self.district.opts.seed, self.opts.host, self.opts.port)  # fmt: skip
        tasks = [asyncio.create_task(g.run(), name=f"sim {g.id}") for g in self.gateways]
        reporter = asyncio.create_task(self._report(clock), name="sim report")
        try:
            if self.opts.duration_s > 0:
                await clock.until(self.opts.duration_s)
            else:
                await asyncio.Future()
        finally:
            reporter.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(reporter, *tasks, return_exceptions=True)
        return self.summary(clock.now())

    def unacked(self) -> tuple[int, float | None]:
        """Messages sent and not acknowledged, and the age (s) of the oldest."""
        sent = [s for g in self.gateways for _, s in g.held.values() if s > 0]
        if not sent:
            return 0, None
        return len(sent), self.gateways[0].clock.now() - min(sent)

    async def _report(self, clock: RunClock) -> None:
        last = self.stats.totals()
        t_last = clock.now()
        while True:
            await asyncio.sleep(self.opts.report_s)
            now, totals = clock.now(), self.stats.totals()
            dt = max(now - t_last, 1e-6)
            lat, self.stats.ack_ms = self.stats.ack_ms, []
            held, oldest = self.unacked()
            logger.info(
                "sim district: %d/%d connected; %.0f msg/s (telemetry %.0f, alert %.1f, health "
                "%.1f), %.0f readings/s; centre acked %.0f/s, ack p50 %s p99 %s; unacked %d "
                "(oldest %s); births %d, cuts %d, resent %d",
                self.stats.connected, len(self.gateways),
                (totals["messages"] - last["messages"]) / dt,
                *((totals.get(k, 0) - last.get(k, 0)) / dt for k in ("telemetry", "alert",
                                                                    "health")),
                (totals["readings"] - last["readings"]) / dt,
                (totals["acked"] - last["acked"]) / dt, _ms(percentile(lat, 0.5)),
                _ms(percentile(lat, 0.99)), held, _s(oldest), totals["births"],
                totals["cuts"], totals["resent"],
            )  # fmt: skip
            last, t_last = totals, now

    def summary(self, elapsed_s: float) -> dict[str, Any]:
        totals = self.stats.totals()
        held, oldest = self.unacked()
        rate = {f"{k}_per_s": round(totals[k] / elapsed_s, 1)
                for k in ("messages", "readings", "acked")} if elapsed_s > 0 else {}  # fmt: skip
        return {"gateways": len(self.gateways), "devices": self.district.opts.devices,
                "seed": self.district.opts.seed, "t0_ms": self.t0_ms,
                "elapsed_s": round(elapsed_s, 1), **totals, **rate, "unacked": held,
                "unacked_oldest_s": oldest}  # fmt: skip


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f} ms"


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


# --- the command ------------------------------------------------------------------------------


def _shard(text: str) -> tuple[int, int]:
    k, _, n = text.partition("/")
    if not (k.isdigit() and n.isdigit() and 0 <= int(k) < int(n)):
        raise ValueError(f"--shard {text!r}: expected K/N with 0 <= K < N, e.g. 0/2")
    return int(k), int(n)


def options(args: argparse.Namespace) -> tuple[DistrictOptions, RunOptions]:
    """The parsed command line as the two option sets; ValueError says what is wrong."""
    ramp = args.ramp if args.ramp is not None else args.gateways / 100
    opts = DistrictOptions(
        seed=args.seed, gateways=args.gateways, devices=args.devices, interval_s=args.interval,
        batch_s=args.batch, health_s=args.health, ramp_s=ramp, storm_at_s=args.storm_at,
        storm_step_s=args.storm_step, deaths=args.deaths, down_s=args.down,
        death_window_s=(ramp + 5, max(ramp + 5, (args.duration or 120) - args.down - 5)),
    )  # fmt: skip
    creds = load_credentials(args.credentials) if args.credentials else None
    run = RunOptions(host=args.mqtt_host, port=args.mqtt_port,
                     prefix=args.prefix or DEFAULT_PREFIX,
                     protocol=args.mqtt_protocol, credentials=creds, shard=_shard(args.shard),
                     duration_s=args.duration, report_s=args.report)  # fmt: skip
    return opts, run


async def _main(district: District, run: RunOptions, events: Events) -> None:
    sim = DistrictSim(district, run, events=events)
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if task is not None:
            loop.add_signal_handler(sig, task.cancel)
    try:
        summary = await sim.run()
    except asyncio.CancelledError:  # SIGTERM: the gateways said goodbye (their Deaths)
        summary = sim.summary(sim.gateways[0].clock.now() if sim.gateways else 0.0)
    print("sim district summary " + json.dumps(summary), flush=True)


def main(args: argparse.Namespace) -> int:
    try:
        opts, run = options(args)
        district = plan(opts)
        DistrictSim(district, run)  # a gateway without credentials is said before any connects
    except (ValueError, OSError) as exc:
        print(f"gridwatch sim district: {exc}", flush=True)
        return exits.USAGE
    if not args.verbose:  # one line per gateway connection is noise at a thousand gateways
        logging.getLogger("gridwatch.ground.mqttsession").setLevel(logging.WARNING)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.events, "a", buffering=1, encoding="utf-8")) \
            if args.events else None  # fmt: skip
        asyncio.run(_main(district, run, Events(out)))
    return exits.OK
