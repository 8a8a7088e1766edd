"""Every process serves Prometheus metrics: the registry on its API, the standalone bridge and the
edge agent on a small listener of their own."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from edge.app import EdgeAgent
from gridwatch.ground.contract import Topics
from gridwatch.top.central import Central
from gridwatch.top.cli import build_parser
from gridwatch.top.sim.modbus import SimField
from tests._central_helpers import batch, bridge_process, now_ms, publisher, reading, until
from tests._ops_helpers import registry, smoke
from tests.fieldkit import gateway_config
from tests.services import Mosquitto, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
MESSAGES = 25


def samples(text: str) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return samples(r.read().decode())


async def test_registry_metrics_are_public_and_parse(tmp_path: Path) -> None:
    async with registry(tmp_path) as reg:
        await reg.ingest(smoke("a1"))
        got = await asyncio.to_thread(scrape, f"{reg.url}/metrics")
    assert got[("gridwatch_webhook_deliveries_total", ())] == 0
    assert ("gridwatch_sse_clients", ()) in got


async def publish_telemetry(port: int, prefix: str, n: int) -> None:
    """``n`` real telemetry messages from one gateway, one reading each."""
    gw, t = f"{prefix}-gw", now_ms()
    async with publisher("127.0.0.1", port) as pub:
        for i in range(n):
            msg = batch(gw, [reading("d1", "level", float(i), t + i)])
            await pub.publish(Topics(prefix).telemetry(gw), msg.model_dump_json(), qos=1)


def bridge_counters(got: Samples) -> dict[str, float]:
    return {
        "received": got[("gridwatch_bridge_received_total", ())],
        "telemetry": got[("gridwatch_bridge_ingested_total", (("kind", "telemetry"),))],
        "points_written": got[("gridwatch_bridge_points_written_total", ())],
        "readings": got[("gridwatch_bridge_readings_total", ())],
    }


async def test_bridge_process_counts_what_it_ingests(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """``bridge run --metrics-port``: the counters follow the ingest, not a start-up snapshot."""
    port = free_port()
    proc = bridge_process(
        ["--data-dir", str(tmp_path), "--mqtt-host", "127.0.0.1", "--mqtt-port",
         str(mosquitto.port), "--prefix", prefix, "--bridge-id", f"b-{prefix}",
         "--metrics-port", str(port)],
        tmp_path / "bridge.log",
    )  # fmt: skip
    try:
        got: Samples = {}
        async with asyncio.timeout(30):  # the process needs a moment to listen and connect
            while got.get(("gridwatch_bridge_connected", ())) != 1:
                with contextlib.suppress(OSError):
                    got = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
                await asyncio.sleep(0.1)
        assert got[("gridwatch_bridge_received_total", ())] == 0
        await publish_telemetry(mosquitto.port, prefix, MESSAGES)
        async with asyncio.timeout(20):  # another process: poll its scrape until it has counted
            while got.get(("gridwatch_bridge_points_written_total", ())) != MESSAGES:
                got = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
                await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    assert bridge_counters(got) == dict.fromkeys(
        ("received", "telemetry", "points_written", "readings"), MESSAGES
    )


async def test_central_metrics_equal_its_health(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """``central run``: /metrics and /health count the same messages, after real ingest."""
    args = build_parser().parse_args(
        ["central", "run", "--http-port", "0", "--data-dir", str(tmp_path), "--prefix", prefix,
         "--mqtt-host", "127.0.0.1", "--mqtt-port", str(mosquitto.port),
         "--bridge-id", f"b-{prefix}"]
    )  # fmt: skip
    central = Central(args)
    stop = asyncio.Event()
    task = asyncio.create_task(central.run(stop), name="central")
    try:
        async with asyncio.timeout(15):
            await central.ready.wait()
            assert central.bridge is not None
            await central.bridge.connected.wait()
        await publish_telemetry(mosquitto.port, prefix, MESSAGES)
        await until(central.bridge, lambda s: s.points_written == MESSAGES)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{central.registry_url}/health") as r:
                health = (await r.json())["parts"]["bridge"]
            async with http.get(f"{central.registry_url}/metrics") as r:
                got = samples(await r.text())
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task
    assert bridge_counters(got) == {
        "received": health["received"], "telemetry": health["ingested"]["telemetry"],
        "points_written": health["points_written"], "readings": health["readings"],
    }  # fmt: skip
    assert health["received"] == MESSAGES


async def test_edge_metrics_count_readings_and_failed_polls(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    cfg, devices, _ = gateway_config(tmp_path, mosquitto.port, prefix)
    async with SimField(devices, update_s=3600) as field:
        field.kill("sd-002")
        agent = EdgeAgent(cfg, devices, metrics_port=free_port())
        task = asyncio.create_task(agent.run())
        try:
            async with asyncio.timeout(15):
                # scrape until the agent has polled and failed (its own counters) and its uplink
                # is up: on a loaded machine the polls can come before the first connection
                while True:
                    got = {}
                    if agent.metrics_url:
                        got = await asyncio.to_thread(scrape, agent.metrics_url)
                    failed = got.get(("gridwatch_edge_poll_failures_total",
                                      (("device", "sd-002"),)), 0)  # fmt: skip
                    up = got.get(("gridwatch_edge_uplink_connected", ()), 0) == 1
                    if (
                        failed >= 1
                        and got.get(("gridwatch_edge_readings_in_total", ()), 0) > 0
                        and up
                    ):
                        break
                    await asyncio.sleep(0.1)
        finally:
            task.cancel()
            done, _ = await asyncio.wait([task], timeout=10)
            assert done, "the edge agent did not stop within 10 s"
    assert got[("gridwatch_edge_uplink_connected", ())] == 1
    assert ("gridwatch_edge_outbox_depth", ()) in got
    assert got[("gridwatch_edge_poll_failures_total", (("device", "wl-001"),))] == 0
