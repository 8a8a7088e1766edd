"""Issue 17: the centre under its own faults, in its production layout on the real parts.

mosquitto, VictoriaMetrics and PostgreSQL of the test's own; two ``bridge run`` processes on one
MQTT 5 shared subscription and two ``registry serve`` processes on the same database, as
docs/central.md lays a district out. A test publisher plays the gateway, so that each message
and its moment are the test's. The outages are crashes (``pg_ctl -m immediate``), not stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from gridwatch.ground.contract import AlertEvent, AlertState, Topics
from tests._central_helpers import end_all, publisher, wait_for_log
from tests._faults_helpers import STARTUP_S, spawn
from tests._ops_helpers import smoke
from tests.fieldkit import Listener, listen
from tests.services import Mosquitto, Postgres, Victoria, free_port

GW = "gw-xh-centre"
OUTAGE_S = 20.0
"""How long each store stays down: the issue's 20 s."""
RESEND_S = 5.0
"""The gateway's ack timeout (``mqtt.ack_timeout_s``, 15 s), shortened to fit the outage."""


@dataclass
class Centre:
    """The centre's processes, started and stopped by name."""

    work: Path
    prefix: str
    broker: Mosquitto
    vm: Victoria
    db_url: str
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    http: dict[str, int] = field(default_factory=dict)

    def log(self, name: str) -> Path:
        return self.work / f"{name}.log"

    def common(self, name: str) -> list[str]:
        return ["--mqtt-host", self.broker.host, "--mqtt-port", str(self.broker.port),
                "--prefix", self.prefix, "--db-url", self.db_url,
                "--data-dir", str(self.work / name), "--bridge-id", f"{name}-{self.prefix}"]  # fmt: skip

    def start_bridge(self, name: str) -> None:
        log = self.log(name)
        start = log.stat().st_size if log.exists() else 0
        args = ["bridge", "run", *self.common(name), "--influx-url", self.vm.url,
                "--share-group", "ingest", "--mqtt-protocol", "5"]  # fmt: skip
        self.procs[name] = spawn(args, log)
        wait_for_log(self.procs[name], log, b"bridge subscribed", start, STARTUP_S)

    def start_registry(self, name: str) -> None:
        log = self.log(name)
        start = log.stat().st_size if log.exists() else 0
        self.http[name] = port = self.http.get(name) or free_port()
        args = ["registry", "serve", *self.common(name), "--http-port", str(port)]
        self.procs[name] = spawn(args, log)
        wait_for_log(self.procs[name], log, b"registry API on", start, STARTUP_S)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        proc.wait(15)

    def tracebacks(self) -> dict[str, int]:
        """Per process log, the tracebacks it printed."""
        found = {n: self.log(n).read_text().count("Traceback") for n in self.http | self.procs}
        return {n: c for n, c in found.items() if c}


@contextlib.contextmanager
def parts(work: Path) -> Iterator[tuple[Mosquitto, Victoria, Postgres]]:
    """A persistent mosquitto, VictoriaMetrics and a PostgreSQL cluster of the test's own (the
    session's PostgreSQL serves every other test: this one crashes its own)."""
    pg_dir = Path(tempfile.mkdtemp(prefix="gridwatch-pg17-"))  # the server runs as `postgres`
    mq = Mosquitto(work / "mq", persistent=True).start()
    vm = Victoria(work / "vm", extra_args=["-dedup.minScrapeInterval=1ms"]).start()
    pg = Postgres(pg_dir).start()
    try:
        yield mq, vm, pg
    finally:
        with contextlib.suppress(RuntimeError):
            pg.stop()
        vm.stop()
        mq.stop()
        shutil.rmtree(pg_dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def running(centre: Centre, bridges: int = 2, registries: int = 2) -> AsyncIterator[Centre]:
    try:
        for i in range(bridges):
            await asyncio.to_thread(centre.start_bridge, f"bridge-{'ab'[i]}")
        for i in range(registries):
            await asyncio.to_thread(centre.start_registry, f"registry-{'ab'[i]}")
        yield centre
    finally:
        procs = list(centre.procs.values())
        try:
            for name in list(centre.procs):
                centre.stop(name, signal.SIGKILL)
        finally:  # one that would not stop must not leave the others running
            end_all(procs)


async def raise_alert(pub: object, platform: Listener, topics: Topics, alert_id: str,
                      seq: int) -> tuple[float, AlertEvent]:  # fmt: skip
    """Publish a critical smoke alert as the gateway would; seconds until the city platform's
    alert topic carries it, and the event (to send again as the gateway does)."""
    event = smoke(alert_id, gateway=GW).model_copy(update={"seq": seq})
    assert event.state is AlertState.RAISED
    started = time.monotonic()
    await pub.publish(topics.alert(GW), event.model_dump_json(), qos=1)  # type: ignore[attr-defined]
    await platform.wait_for(lambda s: on_platform(s, alert_id) >= 1, within_s=OUTAGE_S)
    return time.monotonic() - started, event


def on_platform(platform: Listener, alert_id: str) -> int:
    """How many times the platform's alert topics carried this alert's raise."""
    return sum(1 for t, p, _ in platform.messages
               if "/platform/alert/" in t and p.get("alert_id") == f"{GW}:{alert_id}")  # fmt: skip


async def registry_alerts(db_url: str) -> set[str]:
    """The alert ids the registry database holds, or an empty set while it is down."""
    dsn = db_url.replace("postgresql+asyncpg", "postgresql")
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError):
        return set()
    try:
        return {r["alert_id"] for r in await conn.fetch("SELECT alert_id FROM alerts")}
    finally:
        await conn.close()


async def until(what: str, check: object, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while not await check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"{what}: not within {within_s:.0f}s"
        await asyncio.sleep(0.2)


async def test_a_critical_alert_during_a_database_crash_reaches_the_platform_at_once_and_once(
    tmp_path: Path, prefix: str
) -> None:
    topics = Topics(prefix)
    with parts(tmp_path) as (mq, vm, pg):
        db_url = pg.create_database("centre")
        centre = Centre(tmp_path, prefix, mq, vm, db_url)
        async with (
            running(centre),
            listen(mq.port, f"{prefix}/platform/#") as platform,
            listen(mq.port, topics.ack(GW)) as acks,
            publisher(mq.host, mq.port) as gw,
        ):
            before, _ = await raise_alert(gw, platform, topics, "before", seq=1)
            pg.stop()  # -m immediate: a crash
            crashed = time.monotonic()
            during, event = await raise_alert(gw, platform, topics, "during", seq=2)
            assert time.monotonic() - crashed < OUTAGE_S  # on the platform with the store down
            # unacknowledged, the gateway sends it again after each ack timeout (15 s; here
            # every 5 s), and the share group hands the resends to both bridges in turn
            # (mosquitto 2.0: round robin), so one goes to the bridge that did not publish it
            for _ in range(3):
                await asyncio.sleep(RESEND_S)  # the gateway's ack timeout, shortened
                await gw.publish(topics.alert(GW), event.model_dump_json(), qos=1)
            await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - crashed)))  # the outage
            pg.start()
            want = {f"{GW}:before", f"{GW}:during"}
            await until("both alerts in the registry", lambda: _holds(db_url, want))
            await acks.wait_for(lambda s: _acked(s, 2), within_s=60)
            # one more alert after the outage: by the time it is out, a duplicate of "during"
            # (from a spool replay or the second bridge) would have been published before it
            await raise_alert(gw, platform, topics, "after", seq=3)
        print(f"platform latency: before {before:.3f} s, during the database crash "
              f"{during:.3f} s")  # fmt: skip
        assert [on_platform(platform, a) for a in ("before", "during", "after")] == [1, 1, 1]
        assert centre.tracebacks() == {}


async def _holds(db_url: str, want: set[str]) -> bool:
    return want <= await registry_alerts(db_url)


def _acked(acks: Listener, seq: int) -> bool:
    return any(seq in range(lo, hi + 1) for _, p, _ in acks.messages
               for lo, hi in p.get("streams", {}).get("alert", []))  # fmt: skip
