"""The parts as separate processes, as they scale: ``bridge run`` ingests an alert into the shared
registry database, ``registry serve`` (another process) finds it in the feed by polling and streams
it over SSE, and publishes its lifecycle on the MQTT platform tree."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from gridwatch.ground.contract import AlertState, Topics
from tests._central_helpers import bridge_process, publisher, wait_for_log
from tests._ops_helpers import smoke
from tests.fieldkit import listen
from tests.services import Mosquitto, free_port

ADMIN = "admin-token-for-the-process-test"


def registry_process(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """``gridwatch registry serve`` as its own process, with a known admin token."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridwatch.top.cli", "registry", "serve", *args],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "GRIDWATCH_ADMIN_TOKEN": ADMIN},
        )  # fmt: skip
    wait_for_log(proc, log, b"registry API on")
    return proc


async def test_registry_process_streams_what_the_bridge_process_ingests(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    common = ["--data-dir", str(tmp_path), "--mqtt-host", "127.0.0.1",
              "--mqtt-port", str(mosquitto.port), "--prefix", prefix]  # fmt: skip
    bridge = bridge_process([*common, "--bridge-id", f"b-{prefix}"], tmp_path / "bridge.log")
    port = free_port()
    log = tmp_path / "registry.log"
    registry = registry_process([*common, "--http-port", str(port), "--bridge-id", f"r-{prefix}"],
                                log)  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/api/v1/alerts/stream?since=0"
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with (
            listen(mosquitto.port, f"{prefix}/platform/#") as seen,
            aiohttp.ClientSession() as http,
            http.get(url, headers=headers) as stream,
            publisher("127.0.0.1", mosquitto.port) as pub,
        ):
            assert stream.status == 200
            started = time.monotonic()
            event = smoke("p1", gateway="gw-p")
            await pub.publish(Topics(prefix).alert("gw-p"), event.model_dump_json(), qos=1)
            kinds = []
            async with asyncio.timeout(15):
                async for line in stream.content:
                    if line.startswith(b"data: "):
                        kinds.append(json.loads(line[6:])["kind"])
                        if kinds == ["alert", "lifecycle"]:
                            break
            latency = time.monotonic() - started
            await seen.wait_for(
                lambda s: any("/platform/lifecycle/" in t for t, _, _ in s.messages)
            )
        # across processes the registry polls the feed (1 s); in one process it is woken at once
        assert latency < 5, latency
        topics = {t.removeprefix(prefix) for t, _, _ in seen.messages}
        assert {"/platform/alert/futian/2201/critical",
                "/platform/lifecycle/futian/2201/critical"} <= topics  # fmt: skip
        assert event.state is AlertState.RAISED
    finally:
        for proc in (registry, bridge):
            proc.terminate()
        assert registry.wait(15) == 0, log.read_text()
        assert bridge.wait(15) == 0
    assert "Traceback" not in log.read_text(), log.read_text()
