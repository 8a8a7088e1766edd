"""The edge agent as a service (issue 15): readiness and watchdog over a notify socket the test
owns, ``gridwatch edge status`` with the broker stopped and after a crash, config reload on
SIGHUP, JSON log lines. Each test runs a real ``gridwatch edge run`` process against simulated
Modbus devices."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from gridwatch.top.sim.modbus import SimField
from tests._service_helpers import NotifySocket, Role, with_dead_device
from tests.fieldkit import gateway_config
from tests.services import Mosquitto

WATCHDOG_USEC = 1_000_000  # pings every 0.5 s: the test sees several within seconds


def edge_status(config: Path, cwd: Path) -> tuple[int, dict[str, Any]]:
    out = subprocess.run(
        [sys.executable, "-m", "gridwatch.top.cli", "edge", "status", "-c", str(config),
         "--json"], cwd=cwd, capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    return out.returncode, json.loads(out.stdout)


async def status_until(
    config: Path, cwd: Path, predicate: Callable[[int, dict[str, Any]], bool], within_s: float = 20
) -> tuple[int, dict[str, Any]]:
    """Poll ``edge status`` (it is a file the agent rewrites every 2 s) until ``predicate``."""
    deadline = time.monotonic() + within_s
    while True:
        code, report = await asyncio.to_thread(edge_status, config, cwd)
        if predicate(code, report):
            return code, report
        assert time.monotonic() < deadline, f"edge status never matched; last: {code} {report}"
        await asyncio.sleep(0.3)  # a poll interval, not a wait for an event


def records(role: Role) -> list[dict[str, Any]]:
    return [json.loads(line) for line in role.lines]  # every line must be one JSON object


async def test_ready_then_watchdog_pings_that_stop_while_the_outbox_cannot_be_written(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    """A full disk, made real: the agent's file size limit dropped to one byte (RLIMIT_FSIZE),
    so every outbox write fails with EFBIG as it would with ENOSPC. The pings stop while it
    lasts and come back when the space does; the stop is announced."""
    cfg, devices, path = gateway_config(tmp_path, mosquitto.port, prefix)
    dead = with_dead_device(path)
    notify = NotifySocket()
    async with SimField(devices, update_s=0.2):
        edge = Role(["--log-format", "json", "edge", "run", "-c", str(path)], tmp_path,
                    {"NOTIFY_SOCKET": notify.name, "WATCHDOG_USEC": str(WATCHDOG_USEC)})  # fmt: skip
        try:
            first = await notify.until(lambda m: "READY" in m)
            assert first[0]["READY"] == "1" and "5 devices" in first[0]["STATUS"]
            pings = 0
            while pings < 3:
                pings += "WATCHDOG" in await notify.next(5)

            _, hard = resource.prlimit(edge.proc.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(edge.proc.pid, resource.RLIMIT_FSIZE, (1, hard))
            await notify.until(lambda m: "UNHEALTHY: outbox write failed" in m.get("STATUS", ""))
            after = [await notify.next(5) for _ in range(4)]  # two seconds of supervision
            assert not [m for m in after if "WATCHDOG" in m], after

            resource.prlimit(edge.proc.pid, resource.RLIMIT_FSIZE, (hard, hard))
            await notify.until(lambda m: "WATCHDOG" in m, within_s=10)

            assert edge.stop(signal.SIGTERM) == 0
            stopping = await notify.until(lambda m: "STOPPING" in m, within_s=5)
            assert stopping[-1]["STOPPING"] == "1"
        finally:
            edge.stop(signal.SIGKILL)
            notify.close()
    logged = records(edge)
    assert all({"ts", "level", "logger", "message"} <= r.keys() for r in logged)
    assert all(r.get("gateway") == cfg.gateway.id for r in logged), logged
    failures = [r for r in logged if r["level"] == "ERROR" and r.get("device") == dead]
    assert failures, "the dead device's failure carries its id"
    assert [r for r in logged if r["level"] == "ERROR" and "outbox" in r["message"]]


async def test_edge_status_with_the_broker_stopped_then_after_a_crash(
    prefix: str, tmp_path: Path
) -> None:
    broker = Mosquitto(tmp_path / "mq").start()
    _, devices, path = gateway_config(tmp_path, broker.port, prefix)
    async with SimField(devices, update_s=0.2):
        edge_started = time.time()
        edge = Role(["edge", "run", "-c", str(path)], tmp_path, {})
        try:
            code, report = await status_until(
                path, tmp_path, lambda c, r: c == 0 and r["status"]["uplink"]["connected"]
            )
            assert report["agent"] == "running" and report["problems"] == []
            second = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-m", "gridwatch.top.cli", "edge", "run", "-c",
                                 str(path)], cwd=tmp_path, capture_output=True, timeout=30,
            )  # fmt: skip
            assert second.returncode == 1 and b"another edge agent" in second.stderr
            _, report = await status_until(path, tmp_path, lambda c, r: True)
            assert report["status"]["pid"] == edge.proc.pid  # the second left the file alone
            broker.stop()
            stopped_at = time.time()
            code, report = await status_until(
                path, tmp_path, lambda c, r: not r["status"]["uplink"]["connected"]
            )
            assert code == 1
            down = report["status"]["uplink"]
            assert down["since"] >= stopped_at - 1 and down["endpoint"].endswith(str(broker.port))
            assert any(p.startswith("uplink down since") for p in report["problems"])
            depth = report["outbox"]["waiting"]
            code, report = await status_until(
                path, tmp_path, lambda c, r: r["outbox"]["waiting"] > depth
            )
            oldest = report["outbox"]["oldest_ts"] / 1000
            # no centre acknowledges here: everything since the agent started waits for it
            assert edge_started - 3 < oldest < stopped_at
            polled = report["status"]["devices"]
            assert sorted(polled) == sorted(d.id for d in devices)
            assert all(d["ok"] and d["ts"] / 1000 > stopped_at for d in polled.values())

            human = await asyncio.to_thread(
                subprocess.run,
                [sys.executable, "-m", "gridwatch.top.cli", "edge", "status", "-c", str(path)],
                cwd=tmp_path, capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            assert human.returncode == 1
            assert "uplink: DOWN since" in human.stdout and "outbox: " in human.stdout
            assert "wl-001" in human.stdout and "ok" in human.stdout

            edge.stop(signal.SIGKILL)  # a crash: the status file stays, the pid is gone
            code, report = await asyncio.to_thread(edge_status, path, tmp_path)
            assert code == 1 and report["agent"] == "not running"  # bad news: docs/cli.md
            assert report["problems"][0].startswith("agent not running (last status ")
            assert report["problems"][0].endswith(
                ": it crashed, was killed, or the box lost power)"
            )
            assert report["outbox"]["waiting"] >= depth  # read from the outbox itself
        finally:
            edge.stop(signal.SIGKILL)
            broker.stop()


async def test_sighup_reloads_a_valid_config_and_keeps_the_running_one_on_a_broken_file(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    _, devices, path = gateway_config(tmp_path, mosquitto.port, prefix)
    original = yaml.safe_load(path.read_text())
    notify = NotifySocket()
    async with SimField(devices, update_s=0.2):
        edge = Role(["edge", "run", "-c", str(path)], tmp_path, {"NOTIFY_SOCKET": notify.name})
        try:
            await notify.until(lambda m: "READY" in m)

            broken = {**original, "devices": [{**original["devices"][0], "unit_id": "one"}]}
            path.write_text(yaml.safe_dump(broken, sort_keys=False))
            edge.proc.send_signal(signal.SIGHUP)
            error = await edge.line(lambda x: "SIGHUP:" in x and "not applied" in x)
            assert "running config v1 is kept" in error
            await edge.line(lambda x: "devices -> 0 -> unit_id" in x and f"{path}:" in x)
            await notify.until(lambda m: m.get("READY") == "1")  # serving again, as before

            path.write_bytes(b"\xff\xfe version: 2")  # saved by a tool in UTF-16, say
            edge.proc.send_signal(signal.SIGHUP)
            await edge.line(lambda x: "not UTF-8 text (byte 0)" in x)
            await notify.until(lambda m: m.get("READY") == "1")

            smaller = {**original, "version": 2, "devices": original["devices"][:2]}
            path.write_text(yaml.safe_dump(smaller, sort_keys=False))
            edge.proc.send_signal(signal.SIGHUP)
            await edge.line(lambda x: "reloaded: config version 2 applied (2 devices)" in x)
            _, report = await status_until(
                path, tmp_path, lambda c, r: r["status"]["config_version"] == 2
            )
            assert sorted(report["status"]["devices"]) == ["wl-001", "wl-002"]

            stale = {**original, "version": 2, "gateway": {**original["gateway"], "id": "gw-x"}}
            path.write_text(yaml.safe_dump(stale, sort_keys=False))
            edge.proc.send_signal(signal.SIGHUP)
            await edge.line(lambda x: "this gateway is 'gw-xuhui-01'" in x)
            assert edge.proc.poll() is None
        finally:
            assert edge.stop() == 0
            notify.close()
    code, report = await asyncio.to_thread(edge_status, path, tmp_path)
    assert code == 1 and report["problems"][0].startswith("agent not running (stopped cleanly ")


def test_the_status_of_an_agent_that_never_ran(tmp_path: Path, prefix: str) -> None:
    _, _, path = gateway_config(tmp_path, 1, prefix)
    code, report = edge_status(path, tmp_path)
    assert code == 1 and report["problems"][0] == "agent not running (never wrote a status)"
    assert any("no outbox yet" in p for p in report["problems"])
    assert not os.path.exists(tmp_path / "outbox.db")  # the reader creates nothing
