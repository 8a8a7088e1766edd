"""Running a gridwatch role as systemd would: a datagram socket of the test's own as
``$NOTIFY_SOCKET``, the process's log lines collected as they come."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.services import free_port


class NotifySocket:
    """What a service manager listens on: one datagram per notification."""

    def __init__(self) -> None:
        self.name = f"@gridwatch-test-{uuid.uuid4().hex}"  # abstract: no file, no path limit
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + self.name[1:])
        self.sock.setblocking(False)
        self.seen: list[dict[str, str]] = []

    async def next(self, within_s: float) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(within_s):
            data = await loop.sock_recv(self.sock, 4096)
        msg = dict(line.split("=", 1) for line in data.decode().split("\n"))
        self.seen.append(msg)
        return msg

    async def until(
        self, predicate: Callable[[dict[str, str]], bool], within_s: float = 20
    ) -> list[dict[str, str]]:
        """Every notification up to and including the first that ``predicate`` accepts."""
        got: list[dict[str, str]] = []
        async with asyncio.timeout(within_s):
            while True:
                got.append(await self.next(within_s))
                if predicate(got[-1]):
                    return got

    def close(self) -> None:
        self.sock.close()


class Role:
    """``gridwatch ARGS`` as a process; its stderr lines are kept in ``lines``."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gridwatch.top.cli", *args], cwd=cwd,
            env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self.lines: list[str] = []
        self._changed = threading.Condition()
        # a pipe rather than a file: a test that limits the process's file sizes must not
        # silence its log
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()

    def wait_line(self, predicate: Callable[[str], bool], within_s: float = 20) -> str:
        with self._changed:
            ok = self._changed.wait_for(
                lambda: any(predicate(x) for x in self.lines) or self.proc.poll() is not None,
                within_s,
            )
            found = next((x for x in self.lines if predicate(x)), None)
        if not ok or found is None:
            raise AssertionError("line not logged; log:\n" + "\n".join(self.lines))
        return found

    async def line(self, predicate: Callable[[str], bool], within_s: float = 20) -> str:
        return await asyncio.to_thread(self.wait_line, predicate, within_s)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(15)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def with_dead_device(path: Path) -> str:
    """Add a device on a bus where nothing listens to the gateway config at ``path``; its id."""
    cfg = yaml.safe_load(path.read_text())
    cfg["buses"].append(
        {"type": "modbus_tcp", "id": "dead-tcp", "host": "127.0.0.1", "port": free_port(),
         "timeout_s": 0.5}
    )  # fmt: skip
    cfg["devices"].append(
        {"id": "wl-099", "profile": "water-level-ultrasonic", "bus": "dead-tcp", "unit_id": 1}
    )
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return "wl-099"
