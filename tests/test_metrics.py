"""Every process serves Prometheus metrics: the registry on its API, the standalone bridge and the
edge agent on a small listener of their own."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from edge.app import EdgeAgent
from gridwatch.top.sim.modbus import SimField
from tests._central_helpers import bridge_process
from tests._ops_helpers import registry, smoke
from tests.fieldkit import gateway_config
from tests.services import Mosquitto, free_port


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        return samples(r.read().decode())


async def test_registry_metrics_are_public_and_parse(tmp_path: Path) -> None:
    async with registry(tmp_path) as reg:
        await reg.ingest(smoke("a1"))
        got = await asyncio.to_thread(scrape, f"{reg.url}/metrics")
    assert got[("gridwatch_webhook_deliveries_total", ())] == 0
    assert ("gridwatch_sse_clients", ()) in got


async def test_bridge_process_serves_metrics(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    proc = bridge_process(
        ["--data-dir", str(tmp_path), "--mqtt-host", "127.0.0.1", "--mqtt-port",
         str(mosquitto.port), "--prefix", prefix, "--bridge-id", f"b-{prefix}",
         "--metrics-port", str(port)],
        tmp_path / "bridge.log",
    )  # fmt: skip
    try:
        got: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        async with asyncio.timeout(30):  # the process needs a moment to listen and connect
            while got.get(("gridwatch_bridge_connected", ())) != 1:
                with contextlib.suppress(OSError):
                    got = await asyncio.to_thread(scrape, f"http://127.0.0.1:{port}/metrics")
                await asyncio.sleep(0.1)
    finally:
        proc.terminate()
        assert proc.wait(15) == 0
    assert got[("gridwatch_bridge_connected", ())] == 1
    assert ("gridwatch_bridge_received_total", ()) in got


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
