"""``gridwatch demo``: a simulated district, end to end, on one machine.

Starts the same processes a city runs, as child processes: the central platform (registry, bridge
and, since no broker is configured, an embedded MQTT broker), a field of simulated sensors, and one
edge agent polling them. It prints where to look and every alert the city platform receives. A
simulated rain event raises a water-level alert within the first minute. Ctrl-C stops everything.

Its gateway config is the shipped ``firmware_configs/gateways/demo.yaml``; its state and logs go to
``--workdir`` (``var/demo`` under the current directory), never into the installed package.
Ctrl-C or SIGTERM stops the parts in reverse; on Linux a demo that is killed outright takes them
with it too (the kernel signals them), so none is left holding the ports and the state folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import os
import secrets
import signal
import socket
import sys
import time
from pathlib import Path
from typing import IO

import aiomqtt
import yaml

from firmware_configs import GATEWAYS
from gridwatch.ground import i18n
from gridwatch.ground.alertwords import alert_text, facts_of
from gridwatch.ground.contract import PlatformAlert, Topics
from gridwatch.ground.shipped import firmware


def _port(preferred: int) -> int:
    """The preferred port when it is free (easy to remember), else any free one."""
    for candidate in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = s.getsockname()[1]
            return port
    raise RuntimeError("no free port")


def _write_config(workdir: Path, mqtt_port: int, modbus_port: int) -> Path:
    cfg = yaml.safe_load((firmware(GATEWAYS) / "demo.yaml").read_text())
    cfg["mqtt"]["port"] = mqtt_port
    cfg["mqtt"]["protocol"] = "3.1.1"  # the embedded broker speaks 3.1.1 only
    cfg["outbox"]["path"] = str(workdir / "edge" / "outbox.db")
    for bus in cfg["buses"]:
        # the demo's MQTT sensors publish to the embedded broker the centre runs
        bus["port"] = mqtt_port if bus["type"] == "mqtt" else modbus_port
    path = workdir / "gateway.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


class Demo:
    def __init__(self, workdir: Path, speedup: float) -> None:
        self.workdir = workdir.resolve()
        self.speedup = speedup
        self.http_port = _port(8080)
        self.mqtt_port = _port(1883)
        self.modbus_port = _port(5020)
        self.procs: list[tuple[str, asyncio.subprocess.Process]] = []
        self.topics = Topics()
        # the demo's admin token, so the newcomer can log in to the dashboard and call the API
        self.token = secrets.token_urlsafe(18)

    async def _spawn(self, name: str, *args: str) -> None:
        log = _log_file(self.workdir / f"{name}.log")
        env = {**os.environ, "GRIDWATCH_ADMIN_TOKEN": self.token}
        orphan_guard = functools.partial(_die_with_parent, os.getpid())
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridwatch.top.cli", *args,
            stdout=log, stderr=log, cwd=self.workdir, env=env, preexec_fn=orphan_guard,
        )  # fmt: skip
        self.procs.append((name, proc))

    async def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = _write_config(self.workdir, self.mqtt_port, self.modbus_port)
        await self._spawn(
            "central", "central", "run", "--data-dir", str(self.workdir / "central"),
            "--http-port", str(self.http_port), "--mqtt-port", str(self.mqtt_port),
        )  # fmt: skip
        await _wait_port(self.mqtt_port, self, "central")
        await self._spawn("sim", "sim", "-c", str(config), "--speedup", str(self.speedup))
        await _wait_port(self.modbus_port, self, "sim")
        await self._spawn("edge", "edge", "run", "-c", str(config))

    def banner(self) -> str:
        alerts = self.topics.platform_alerts()
        url = f"http://127.0.0.1:{self.http_port}"
        return "\n".join(
            [
                "gridwatch demo: a simulated district is running",
                f"  dashboard       {url}/dashboard   (log in with token {self.token})",
                f"  registry API    curl -H 'Authorization: Bearer {self.token}' {url}/api/v1/devices",
                f"  health          GRIDWATCH_TOKEN={self.token} gridwatch health --url {url}",
                f"  MQTT broker     127.0.0.1:{self.mqtt_port} (embedded)",
                f"  city alerts     mosquitto_sub -p {self.mqtt_port} -t '{alerts}' -v",
                f"  gateway data    mosquitto_sub -p {self.mqtt_port} -t 'gridwatch/gw/#' -v",
                f"  logs            {self.workdir}/*.log",
                "A rain event starts in a few seconds; the water level passes its warning line "
                "within a minute. Ctrl-C stops everything.",
                "",
            ]
        )

    async def watch_alerts(self) -> None:
        """Print every alert the city platform receives, as it arrives."""
        while True:
            try:
                async with aiomqtt.Client(
                    "127.0.0.1", self.mqtt_port, identifier="demo-watch"
                ) as c:
                    await c.subscribe(self.topics.platform_alerts(), qos=1)
                    async for msg in c.messages:
                        print(format_alert(bytes(msg.payload)), flush=True)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.5)

    async def stop(self) -> None:
        for _name, proc in reversed(self.procs):
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()

    def check_children(self) -> str | None:
        for name, proc in self.procs:
            if proc.returncode is not None:
                return f"{name} exited with {proc.returncode}; see {self.workdir / (name + '.log')}"
        return None


# Linux's prctl(PR_SET_PDEATHSIG): the kernel sends the child this signal when the demo dies, so a
# demo that is killed (SIGKILL, an OOM kill) leaves no platform, simulator or edge holding its
# ports and state. Looked up before any fork: the child only makes the call.
_PR_SET_PDEATHSIG = 1
_prctl = (
    getattr(ctypes.CDLL(None, use_errno=True), "prctl", None) if sys.platform == "linux" else None
)


def _die_with_parent(parent: int) -> None:
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the demo died before the call: nobody will signal us
            os._exit(1)


def _log_file(path: Path) -> IO[bytes]:
    return open(path, "ab")  # the child process writes to it until it exits


def format_alert(payload: bytes) -> str:
    try:
        a = PlatformAlert.model_validate_json(payload)
    except ValueError:
        return i18n._("(unreadable alert: {payload!r})").format(payload=payload[:200])
    when = time.strftime("%H:%M:%S", time.localtime(a.ts / 1000))
    where = "/".join(x for x in (a.location.district, a.location.grid) if x)
    said = alert_text(facts_of(a), i18n.current())  # the one rendering of an alert in words
    return f"{when} {said}  [{where} {a.alert_id}]"


# a child that dies is noticed at once (check_children); the deadline only bounds a slow start,
# and a busy two-core box has taken over 20 s to import and start the central platform
async def _wait_port(port: int, demo: Demo, name: str, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        problem = demo.check_children()
        if problem:
            raise RuntimeError(problem)
        with contextlib.suppress(OSError):
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        await asyncio.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on port {port} within {within_s}s")


async def _run(args: argparse.Namespace) -> int:
    demo = Demo(Path(args.workdir), args.speedup)
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
    try:
        await demo.start()
        print(demo.banner(), flush=True)
        watcher = asyncio.create_task(demo.watch_alerts(), name="alert-watch")
        deadline = time.monotonic() + args.duration if args.duration else None
        while deadline is None or time.monotonic() < deadline:
            problem = demo.check_children()
            if problem:
                print(f"demo stopped: {problem}", file=sys.stderr)
                return 1
            await asyncio.sleep(0.5)
        watcher.cancel()
    except asyncio.CancelledError:
        pass
    except RuntimeError as exc:
        print(f"demo could not start: {exc}", file=sys.stderr)
        return 1
    finally:
        print("stopping...", flush=True)
        await demo.stop()
    return 0


def main(args: argparse.Namespace) -> int:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(_run(args))


__all__ = ["Demo", "format_alert", "main"]
