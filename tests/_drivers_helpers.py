"""Helpers for the driver tests: free ports, gateways built in code, outcome collection."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import selectors
import shutil
import socket
import subprocess
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.base import PollOutcome
from gridwatch.ground.gatewayconf import (
    GatewayConfig,
    ResolvedDevice,
    default_profiles_dir,
    resolve,
)
from gridwatch.ground.profiles import ModbusProfile, MqttProfile, load_profiles


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def gateway(
    buses: list[dict[str, Any]],
    devices: list[dict[str, Any]],
    extra_profiles: list[dict[str, Any]] | None = None,
) -> list[ResolvedDevice]:
    """Resolved devices of a gateway config written as dicts, with the shipped profiles."""
    profiles: dict[str, ModbusProfile | MqttProfile] = dict(load_profiles(default_profiles_dir()))
    for raw in extra_profiles or []:
        prof = ModbusProfile.model_validate(raw) if raw["protocol"] == "modbus" else (
            MqttProfile.model_validate(raw))  # fmt: skip
        profiles[prof.id] = prof
    cfg = GatewayConfig.model_validate(
        {"gateway": {"id": "gw-test"}, "buses": buses, "devices": devices}
    )
    return resolve(cfg, profiles)


class Outcomes:
    """A sink that keeps every outcome with its arrival time and wakes waiters."""

    def __init__(self) -> None:
        self.by_device: dict[str, list[tuple[float, PollOutcome]]] = defaultdict(list)
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    def __call__(self, outcome: PollOutcome) -> None:
        self.by_device[outcome.device].append((self._loop.time(), outcome))
        self._changed.set()

    async def wait_for(self, cond: Callable[[], bool], within: float) -> None:
        """Until ``cond()`` holds; TimeoutError after ``within`` seconds."""
        async with asyncio.timeout(within):
            while not cond():
                self._changed.clear()
                await self._changed.wait()

    def count(self, device: str) -> int:
        return len(self.by_device[device])

    def outcomes(self, device: str) -> list[PollOutcome]:
        return [o for _, o in self.by_device[device]]

    def gaps(self, device: str) -> list[float]:
        times = [t for t, _ in self.by_device[device]]
        return [b - a for a, b in itertools.pairwise(times)]


class Broker:
    """A mosquitto of the test's own on a free loopback port; ``start()`` returns once it
    logged that it listens (read from its log, no fixed sleep)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> Broker:
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                        "log_dest stderr\npersistence false\n")  # fmt: skip
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_for_output(self.proc, f"port {self.port}", 10)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.communicate(timeout=10)
            self.proc = None


def wait_for_output(proc: subprocess.Popen[str], needle: str, within: float) -> None:
    """Read the process's stderr until it contains ``needle``, then keep draining it in a
    thread so a chatty process never blocks on a full pipe."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    sel = selectors.DefaultSelector()
    sel.register(fd, selectors.EVENT_READ)
    seen = b""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0 and proc.poll() is None:
        if sel.select(left):
            seen += os.read(fd, 65536)
            if needle.encode() in seen:
                threading.Thread(target=_drain, args=(fd,), daemon=True).start()
                return
    raise TimeoutError(f"process never wrote {needle!r}: {seen[-500:]!r}")


def _drain(fd: int) -> None:
    with contextlib.suppress(OSError):
        while os.read(fd, 65536):
            pass
