"""``gridwatch bridge run`` as a real process: clean SIGTERM, and kill -9 mid-stream loses and
doubles nothing (at-least-once delivery + dedupe + an idempotent time-series store)."""

from __future__ import annotations

import asyncio
import signal
import uuid
from pathlib import Path

import aiomqtt
import pytest

from gridwatch.ground.contract import Topics
from tests._central_helpers import (
    batch,
    bridge_process,
    count_rows,
    now_ms,
    reading,
    start_vm_with_dedup,
)
from tests.services import Mosquitto, Victoria, free_port

BATCHES, DEVICES, POINTS = 200, 10, 10


async def wait_rows(db: Path, table: str, n: int) -> None:
    """Another process's progress is in its database: poll it, with a deadline."""
    async with asyncio.timeout(30):
        while await asyncio.to_thread(count_rows, db, table) < n:  # noqa: ASYNC110
            await asyncio.sleep(0.05)


async def samples(vm: Victoria, gateway: str, n: int) -> list[dict[str, object]]:
    """Poll until ``n`` samples are searchable (VictoriaMetrics buffers about a second)."""
    async with asyncio.timeout(15):
        while True:
            rows = await asyncio.to_thread(vm.export, f'gridwatch_value{{gateway="{gateway}"}}')
            if sum(len(r["values"]) for r in rows) >= n:
                return rows
            await asyncio.sleep(0.2)


async def test_kill_9_mid_stream_loses_and_doubles_nothing(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    vm = start_vm_with_dedup(tmp_path / "vm")
    gw, t0 = prefix, now_ms() - 600_000
    args = ["--mqtt-host", mosquitto.host, "--mqtt-port", str(mosquitto.port), "--prefix", prefix,
            "--influx-url", vm.url, "--data-dir", str(tmp_path), "--bridge-id", f"b-{prefix}",
            "--mqtt-protocol", "5"]  # fmt: skip
    log, db = tmp_path / "bridge.log", tmp_path / "registry.db"
    msgs = [
        batch(gw, [reading(f"d{d}", f"p{p}", float(i), t0 + i) for d in range(DEVICES) for p in range(POINTS)], seq=i + 1)
        for i in range(BATCHES)
    ]  # fmt: skip
    proc = bridge_process(args, log)
    try:
        async with aiomqtt.Client(
            mosquitto.host, mosquitto.port, protocol=aiomqtt.ProtocolVersion.V5
        ) as pub:
            for m in msgs[: BATCHES // 2]:
                await pub.publish(Topics(prefix).telemetry(gw), m.model_dump_json(), qos=1)
            await wait_rows(db, "seen_messages", 10)
            proc.kill()  # mid-stream: some written and acknowledged, some in flight
            proc.wait(5)
            done_before = await asyncio.to_thread(count_rows, db, "seen_messages")
            for m in msgs[BATCHES // 2 :]:  # the broker keeps them for the bridge's session
                await pub.publish(Topics(prefix).telemetry(gw), m.model_dump_json(), qos=1)
        proc = bridge_process(args, log)
        await wait_rows(db, "seen_messages", BATCHES)
        rows = await samples(vm, gw, BATCHES * DEVICES * POINTS)
        assert len(rows) == DEVICES * POINTS
        for r in rows:
            assert r["timestamps"] == [t0 + i for i in range(BATCHES)], r["metric"]
            assert r["values"] == [float(i) for i in range(BATCHES)], r["metric"]
        assert done_before < BATCHES  # the kill did land mid-stream
    finally:
        proc.kill()
        proc.wait(5)
        vm.stop()


async def test_sigterm_stops_the_bridge_cleanly(
    mosquitto: Mosquitto, victoria: Victoria, prefix: str, tmp_path: Path
) -> None:
    args = ["--mqtt-host", mosquitto.host, "--mqtt-port", str(mosquitto.port), "--prefix", prefix,
            "--influx-url", victoria.url, "--data-dir", str(tmp_path), "--bridge-id", f"b-{prefix}"]  # fmt: skip
    log = tmp_path / "bridge.log"
    proc = bridge_process(args, log)
    try:
        async with aiomqtt.Client(mosquitto.host, mosquitto.port) as pub:
            msg = batch(prefix, [reading("d1", "level", 4.5, now_ms())])
            await pub.publish(Topics(prefix).telemetry(prefix), msg.model_dump_json(), qos=1)
        await wait_rows(tmp_path / "registry.db", "seen_messages", 1)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 10) == 0
        assert b"stopping: bridge" in log.read_bytes()
        assert b"Traceback" not in log.read_bytes()
        assert b"(MQTT 5)" in log.read_bytes()  # auto picked MQTT 5 on mosquitto
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def test_a_bridge_process_that_never_subscribes_is_not_left_running(tmp_path: Path) -> None:
    """A test whose bridge process does not come up fails; the process must not outlive it."""
    bridge_id = f"leak-check-{uuid.uuid4().hex[:8]}"
    args = ["--mqtt-host", "127.0.0.1", "--mqtt-port", str(free_port()), "--prefix", "p",
            "--data-dir", str(tmp_path), "--bridge-id", bridge_id]  # fmt: skip
    with pytest.raises(TimeoutError):
        bridge_process(args, tmp_path / "bridge.log", within_s=1.0)  # nobody listens there
    assert running_with(bridge_id) == []


def running_with(word: str) -> list[int]:
    """The processes whose command line holds ``word``."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if word.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:  # gone meanwhile
            continue
    return found
