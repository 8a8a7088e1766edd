"""Real components for the tests: mosquitto, VictoriaMetrics and PostgreSQL on free loopback ports.

Each service can be stopped and started again on the same port (the fault-injection tests need
that). Start-up waits on the service's own readiness (a TCP connect or /health), never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout}s") from None
            time.sleep(0.02)


def _need(binary: str) -> str:
    path = shutil.which(binary) or (
        f"/usr/sbin/{binary}" if Path(f"/usr/sbin/{binary}").exists() else None
    )
    if not path:
        raise RuntimeError(f"{binary} is not installed: run `make test-deps` (Debian packages)")
    return path


@dataclass
class Mosquitto:
    """A mosquitto broker of our own. ``extra`` lines go into its config (auth, ACL, TLS)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    persistent: bool = False  # keep sessions and queued messages across a restart
    users: dict[str, str] | None = None  # name -> password; set: no anonymous clients
    proc: subprocess.Popen[bytes] | None = None

    rundir: Path | None = None

    @property
    def conf(self) -> Path:
        return self._rundir() / "mosquitto.conf"

    @property
    def log(self) -> Path:
        return self._rundir() / "mosquitto.log"

    def _rundir(self) -> Path:
        # mosquitto drops to its own user before it writes its log and persistence file, and
        # pytest's tmp dirs are private to root: keep those files where that user can reach them
        if self.rundir is None:
            self.rundir = Path(tempfile.mkdtemp(prefix="gridwatch-mq-"))
            self.rundir.chmod(0o777)
        return self.rundir

    def start(self) -> Mosquitto:
        self.workdir.mkdir(parents=True, exist_ok=True)
        run = self._rundir()
        lines = [
            f"listener {self.port} {self.host}",
            *(
                ["persistence true", f"persistence_location {run}/"]
                if self.persistent
                else ["persistence false"]
            ),
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_queued_messages 100000",
            "max_inflight_messages 1000",
        ]
        if self.users is not None:
            for name, password in self.users.items():
                self.add_user(name, password)
            lines += ["allow_anonymous false", f"password_file {self.passwd}"]
        elif not any(line.startswith(("allow_anonymous", "password_file")) for line in self.extra):
            lines.append("allow_anonymous true")
        self.conf.write_text("\n".join([*lines, *self.extra]) + "\n")
        self.proc = subprocess.Popen(
            [_need("mosquitto"), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.host, self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)
        self.proc = None

    def restart(self, sig: int = 9) -> None:
        """End the broker with ``sig`` (SIGKILL: a crash; SIGTERM: a clean stop), then start it
        again on the same port, with the same config."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(10)
        self.proc = None
        self.start()

    @property
    def passwd(self) -> Path:
        return self._rundir() / "passwd"

    def add_user(self, name: str, password: str) -> None:
        """Add (or change) a user; a running broker needs ``reload()`` to see it."""
        self.passwd.touch()
        subprocess.run(["mosquitto_passwd", "-b", str(self.passwd), name, password], check=True)
        self.passwd.chmod(0o644)

    def reload(self) -> None:
        """SIGHUP: mosquitto rereads password and ACL files."""
        assert self.proc is not None
        self.proc.send_signal(1)


_VM_TEST_FLAGS = ["-retentionPeriod=100y", "-search.latencyOffset=0s", "-search.disableCache"]


@dataclass
class Victoria:
    """VictoriaMetrics, which accepts InfluxDB's /api/v2/write."""

    workdir: Path
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)  # e.g. -dedup.minScrapeInterval=1ms
    flags: list[str] | None = None
    """Every flag but the address and data folder (a command line the docs give); None: the
    tests' own (``_VM_TEST_FLAGS``)."""
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Victoria:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                _need("victoria-metrics"),
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={self.workdir / 'data'}",
                *(self.flags if self.flags is not None else _VM_TEST_FLAGS),
                "-loggerLevel=ERROR",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "vm.log", "ab"),  # noqa: SIM115 - lives as long as the proc
        )
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=0.5) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError("victoria-metrics did not become healthy")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def force_flush(self) -> None:
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=5):
            pass

    def export(self, match: str) -> list[dict[str, Any]]:
        """Every series matching ``match`` as VictoriaMetrics' JSON-lines export."""
        self.force_flush()
        q = urllib.request.quote(match)
        with urllib.request.urlopen(f"{self.url}/api/v1/export?match[]={q}", timeout=10) as r:
            return [json.loads(line) for line in r.read().decode().splitlines() if line.strip()]


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster (as root: initdb runs as the postgres user)."""

    workdir: Path
    port: int = field(default_factory=free_port)
    bindir: Path = field(default_factory=lambda: _pg_bindir())

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _as_postgres(self, *cmd: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        done = subprocess.run([*prefix, *cmd], capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()}")

    def start(self) -> Postgres:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.workdir, "postgres", "postgres")
        if not self.data.exists():
            self._as_postgres(
                str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
                "-A", "trust", "--no-sync",
            )  # fmt: skip
        opts = f"-p {self.port} -k {self.workdir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-w", "-l",
            str(self.workdir / "pg.log"), "-o", opts, "start",
        )  # fmt: skip
        return self

    def create_database(self, name: str) -> str:
        self._as_postgres(
            str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
            "-U", "postgres", name,
        )  # fmt: skip
        return self.url(name)

    def stop(self, mode: str = "immediate", wait: bool = True) -> None:
        """``mode``: immediate (a crash), fast (an administrator's restart: sessions end with
        57P01), smart (new sessions refused with 57P03 until the open ones end); ``wait``:
        return when it has stopped, else at once."""
        self._as_postgres(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode,
            *(() if wait else ("-W",)), "stop",
        )  # fmt: skip


def _pg_bindir() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    if not versions:
        raise RuntimeError("PostgreSQL server is not installed: run `make test-deps`")
    return versions[-1]


@contextlib.contextmanager
def central_run(
    mosquitto: Mosquitto, victoria: Victoria, prefix: str, workdir: Path, *extra: str,
    start_within_s: float = 60, check_exit: bool = True,
) -> Iterator[str]:  # fmt: skip
    """``gridwatch central run`` (registry on SQLite, bridge, platform publisher) as its own
    process on ``mosquitto`` and ``victoria``, ready once its bridge subscribed; yields its URL.
    It is stopped however the test ends, and its log must hold no traceback (nor, with
    ``check_exit``, a stop other than a clean one)."""
    port = free_port()
    log = workdir / "central.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridwatch.top.cli", "central", "run",
             "--data-dir", str(workdir / "central"), "--http-port", str(port),
             "--mqtt-host", "127.0.0.1", "--mqtt-port", str(mosquitto.port), "--prefix", prefix,
             "--influx-url", victoria.url, "--bridge-id", f"bridge-{prefix}", *extra],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + start_within_s
        while b"bridge subscribed" not in log.read_bytes():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)  # another process's log, polled with a deadline
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        code = proc.wait(15)
    if check_exit:
        assert code == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


async def eventually(fetch: Any, ok: Any, within_s: float = 10.0) -> Any:
    """Another process's state, fetched (blocking, in a thread) until ``ok`` holds: a deadline,
    not a fixed sleep."""
    deadline = time.monotonic() + within_s
    while True:
        value = await asyncio.to_thread(fetch)
        if ok(value):
            return value
        assert time.monotonic() < deadline, f"still not there after {within_s}s: {value}"
        await asyncio.sleep(0.1)
