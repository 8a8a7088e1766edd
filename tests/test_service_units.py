"""The systemd side of every role (issue 15): the shipped units pass ``systemd-analyze verify``
and carry what they promise; the sd_notify protocol, the JSON log format and the edge status
judgement as tables; the bridge and the registry tell a notify socket the test owns when they
serve and when they stop."""

from __future__ import annotations

import contextvars
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edge.status import (
    EXIT_HEALTHY,
    EXIT_NOT_RUNNING,
    EXIT_PROBLEMS,
    judge,
    payload_ts,
    pid_alive,
)
from gridwatch.ground import logfmt, sdnotify
from gridwatch.ground.shipped import shipped
from gridwatch.top.cli import build_parser
from tests._service_helpers import NotifySocket, Role
from tests.services import Mosquitto, free_port

UNITS = ("gridwatch-edge.service", "gridwatch-bridge.service", "gridwatch-registry.service")
SHIPPED_EXEC = "/opt/gridwatch/bin/gridwatch"


def unit_text(name: str) -> str:
    return shipped("firmware_configs", "systemd", name).read_text()


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_passes_without_a_warning(name: str, tmp_path: Path) -> None:
    """verify needs no running systemd, but the ExecStart binary must exist: the copy under test
    runs this venv's gridwatch instead of the documented /opt/gridwatch one."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze missing: apt-get install systemd"
    gridwatch = Path(sys.executable).parent / "gridwatch"
    assert gridwatch.exists(), f"{gridwatch}: install gridwatch into the venv (make venv)"
    text = unit_text(name)
    assert SHIPPED_EXEC in text
    unit = tmp_path / name
    unit.write_text(text.replace(SHIPPED_EXEC, str(gridwatch)))
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True,
                         timeout=60, check=False)  # fmt: skip
    assert (out.returncode, out.stdout + out.stderr) == (0, "")


def test_a_unit_systemd_would_complain_about_fails_the_check(tmp_path: Path) -> None:
    unit = tmp_path / "broken.service"
    unit.write_text("[Service]\nType=notify\nExecStart=/nonexistent/gridwatch edge run\n"
                    "WatchdogSecs=30\n")  # fmt: skip
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60, check=False)  # fmt: skip
    assert out.returncode != 0 and "Unknown key 'WatchdogSecs'" in out.stderr


COMMON = {
    "Type": ["notify"], "NotifyAccess": ["main"], "Restart": ["on-failure"],
    "WatchdogSec": ["30"], "DynamicUser": ["yes"], "ProtectSystem": ["strict"],
    "ProtectHome": ["yes"], "PrivateTmp": ["yes"], "NoNewPrivileges": ["yes"],
    "CapabilityBoundingSet": [""], "RestrictAddressFamilies": ["AF_INET AF_INET6 AF_UNIX"],
    "ConfigurationDirectory": ["gridwatch"],
}  # fmt: skip
EXPECTED: dict[str, dict[str, list[str]]] = {
    "gridwatch-edge.service": COMMON | {
        "StateDirectory": ["gridwatch-edge"], "User": ["gridwatch-edge"],
        "SupplementaryGroups": ["dialout"], "DevicePolicy": ["closed"],
        "DeviceAllow": ["char-ttyS rw", "char-ttyUSB rw", "char-ttyACM rw"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"], "StartLimitIntervalSec": ["0"],
    },
    "gridwatch-bridge.service": COMMON | {
        "StateDirectory": ["gridwatch"], "User": ["gridwatch"], "PrivateDevices": ["yes"],
    },
    "gridwatch-registry.service": COMMON | {
        "StateDirectory": ["gridwatch"], "User": ["gridwatch"], "PrivateDevices": ["yes"],
    },
}  # fmt: skip


@pytest.mark.parametrize("name", UNITS)
def test_each_unit_supervises_and_confines_its_role(name: str) -> None:
    found = directives(unit_text(name))
    for key, values in EXPECTED[name].items():
        assert found.get(key) == values, key
    assert found["ExecStart"][0].startswith(f"{SHIPPED_EXEC} --log-format json ")


# --- sd_notify, pure ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"NOTIFY_SOCKET": ""}, None),
        ({"NOTIFY_SOCKET": "/run/systemd/notify"}, "/run/systemd/notify"),
        ({"NOTIFY_SOCKET": "@abstract/name"}, "\0abstract/name"),
        ({"NOTIFY_SOCKET": "vsock:2:1234"}, None),
    ],
)
def test_notify_socket_address(env: dict[str, str], expected: str | None) -> None:
    assert sdnotify.address(env) == expected


@pytest.mark.parametrize(
    ("env", "pid", "expected"),
    [
        ({}, 10, None),
        ({"WATCHDOG_USEC": "30000000"}, 10, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "10"}, 10, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "11"}, 10, None),  # meant for another
        ({"WATCHDOG_USEC": "0"}, 10, None),
        ({"WATCHDOG_USEC": "soon"}, 10, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(
    env: dict[str, str], pid: int, expected: float | None
) -> None:
    assert sdnotify.watchdog_interval(env, pid) == expected


def test_notify_message_lines() -> None:
    assert sdnotify.message(READY=1, STATUS="4 devices") == b"READY=1\nSTATUS=4 devices"
    with pytest.raises(ValueError, match="single lines"):
        sdnotify.message(STATUS="two\nlines")


def test_notify_without_a_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify(READY=1) is False


async def test_notify_reaches_a_socket_the_test_owns(monkeypatch: pytest.MonkeyPatch) -> None:
    sock = NotifySocket()
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", sock.name)
        assert sdnotify.notify(READY=1, STATUS="serving")
        assert await sock.next(2) == {"READY": "1", "STATUS": "serving"}
    finally:
        sock.close()


# --- JSON log lines, pure -----------------------------------------------------------------------
def record(msg: str, **extra: Any) -> logging.LogRecord:
    rec = logging.LogRecord("edge.uplink", logging.ERROR, __file__, 1, msg, (), None)
    rec.__dict__.update(extra)
    return rec


@pytest.mark.parametrize(
    ("context", "extra", "expected"),
    [
        ({}, {}, {}),
        ({"gateway": "gw-1"}, {}, {"gateway": "gw-1"}),
        ({"gateway": "gw-1", "device": "wl-1"}, {}, {"gateway": "gw-1", "device": "wl-1"}),
        ({"gateway": "gw-1"}, {"device": "wl-2"}, {"gateway": "gw-1", "device": "wl-2"}),
        ({"device": "wl-1"}, {"device": "wl-2"}, {"device": "wl-2"}),  # the record's own wins
    ],
)
def test_json_log_line_carries_its_context(
    context: dict[str, str], extra: dict[str, str], expected: dict[str, str]
) -> None:
    def in_context() -> dict[str, Any]:
        logfmt.log_context(**context)
        line = logfmt.JsonFormatter().format(record("broker 'x' said \"no\"\n", **extra))
        assert "\n" not in line  # one record, one line, whatever the message holds
        parsed: dict[str, Any] = json.loads(line)
        return parsed

    got = contextvars.copy_context().run(in_context)
    assert {k: got[k] for k in ("level", "logger", "message")} == {
        "level": "ERROR", "logger": "edge.uplink", "message": "broker 'x' said \"no\"\n"
    }  # fmt: skip
    assert got["ts"].endswith("+00:00")
    assert {k: got[k] for k in ("gateway", "device") if k in got} == expected


@pytest.mark.parametrize(
    ("flag", "env", "expected"),
    [(None, "", "text"), (None, "json", "json"), ("text", "json", "text"), (None, "yaml", None)],
)
def test_log_format_choice(
    flag: str | None, env: str, expected: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GRIDWATCH_LOG_FORMAT", env)
    if expected is None:
        with pytest.raises(ValueError, match="log format 'yaml'"):
            logfmt.chosen_format(flag)
    else:
        assert logfmt.chosen_format(flag) == expected


# --- edge status judgement, pure ----------------------------------------------------------------
NOW = 1_000_000.0


def status(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "gateway": "gw-1", "pid": 1, "started_at": NOW - 600, "written_at": NOW - 1,
        "config_version": 3,
        "uplink": {"connected": True, "since": NOW - 500, "endpoint": "mq:1883",
                   "last_error": None, "outages": 0},
        "outbox": {"waiting": 0, "by_kind": {}, "oldest_ts": None},
        "devices": {"wl-1": {"ok": True, "ts": (NOW - 1) * 1000, "error": ""}},
        "errors": [], "unhealthy": [],
    }  # fmt: skip
    return base | over


DOWN = {"connected": False, "since": NOW - 90, "endpoint": "mq:1883",
        "last_error": "connection refused", "outages": 1}  # fmt: skip


@pytest.mark.parametrize(
    ("st", "alive", "code", "problems"),
    [
        (status(), True, EXIT_HEALTHY, []),
        (status(uplink=DOWN), True, EXIT_PROBLEMS,
         ["uplink down since 1970-01-12 13:45:10 UTC (90 s ago): connection refused"]),
        (status(devices={"wl-1": {"ok": False, "ts": NOW * 1000, "error": "no answer"}}), True,
         EXIT_PROBLEMS, ["device wl-1: no answer"]),
        (status(devices={"wl-1": {"ok": None, "ts": None, "error": ""}}), True, EXIT_PROBLEMS,
         ["device wl-1: not polled yet"]),
        (status(unhealthy=["outbox write failed: disk full"]), True, EXIT_PROBLEMS,
         ["outbox write failed: disk full"]),
        (status(written_at=NOW - 60), True, EXIT_PROBLEMS,
         ["status not updated since 60 s ago: the agent is hung, or cannot write beside its "
          "outbox (a full disk?)"]),
        (status(written_at=NOW - 180), False, EXIT_NOT_RUNNING,
         ["agent not running (last status 3 min ago: it crashed, was killed, or the box lost "
          "power)"]),
        (status(written_at=NOW - 180, stopped_at=NOW - 180), False, EXIT_NOT_RUNNING,
         ["agent not running (stopped cleanly 3 min ago)"]),
        (None, False, EXIT_NOT_RUNNING, ["agent not running (never wrote a status)"]),
    ],
)  # fmt: skip
def test_edge_status_judgement(
    st: dict[str, Any] | None, alive: bool, code: int, problems: list[str]
) -> None:
    report = judge(st, alive, None, NOW)
    assert (report.exit, report.problems) == (code, problems)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b'{"kind": "health", "ts": 5}', 5),
        (b'{"kind": "telemetry", "readings": [{"ts": 9}, {"ts": 7}]}', 7),
        (b'{"kind": "x"}', None),
        (b"not json", None),
        (b"[1, 2]", None),
        (b'{"ts": "yesterday"}', None),
    ],
)
def test_the_age_of_a_queued_message(payload: bytes, expected: int | None) -> None:
    assert payload_ts(payload) == expected


# --- the central roles, as processes -----------------------------------------------------------
async def test_registry_tells_systemd_when_it_serves_and_when_it_stops(tmp_path: Path) -> None:
    sock = NotifySocket()
    port = free_port()
    reg = Role(["registry", "serve", "--data-dir", str(tmp_path), "--http-port", str(port)],
               tmp_path, {"NOTIFY_SOCKET": sock.name, "WATCHDOG_USEC": "400000"})  # fmt: skip
    try:
        ready = await sock.until(lambda m: "READY" in m, within_s=60)
        assert ready[-1]["STATUS"] == f"registry API on http://127.0.0.1:{port}"
        await sock.until(lambda m: "WATCHDOG" in m, within_s=5)
        assert reg.stop(signal.SIGTERM) == 0
        await sock.until(lambda m: m.get("STOPPING") == "1", within_s=5)
    finally:
        reg.stop(signal.SIGKILL)
        sock.close()


async def test_bridge_tells_systemd_when_its_sessions_run(tmp_path: Path) -> None:
    broker = Mosquitto(tmp_path / "mq").start()
    sock = NotifySocket()
    bridge = Role(["bridge", "run", "--data-dir", str(tmp_path), "--mqtt-host", "127.0.0.1",
                   "--mqtt-port", str(broker.port)], tmp_path,
                  {"NOTIFY_SOCKET": sock.name, "WATCHDOG_USEC": "400000"})  # fmt: skip
    try:
        ready = await sock.until(lambda m: "READY" in m, within_s=60)
        assert ready[-1]["STATUS"] == "serving: bridge"
        await sock.until(lambda m: "WATCHDOG" in m, within_s=5)
        assert bridge.stop(signal.SIGTERM) == 0
        await sock.until(lambda m: m.get("STOPPING") == "1", within_s=5)
    finally:
        bridge.stop(signal.SIGKILL)
        sock.close()
        broker.stop()


def test_a_pid_reused_by_another_process_is_not_the_agent() -> None:
    """After a reboot the status file's pid may name anything: this test's own process, say."""
    assert not pid_alive(os.getpid())
    assert not pid_alive(2**22 + 1)  # above pid_max: no such process
    agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", "edge", "run"])
    try:
        assert pid_alive(agent.pid)
    finally:
        agent.kill()
        agent.wait()


@pytest.mark.parametrize("name", UNITS)
def test_each_units_command_line_is_one_gridwatch_understands(name: str) -> None:
    """What systemd would run, with its specifiers filled in and the options file empty."""
    (exec_start,) = directives(unit_text(name))["ExecStart"]
    words = exec_start.replace("%E", "/etc").replace("%S", "/var/lib").split()
    assert words[0] == SHIPPED_EXEC
    args = build_parser().parse_args([w for w in words[1:] if not w.startswith("$")])
    assert args.log_format == "json"
    assert (args.cmd, args.sub) == {
        "gridwatch-edge.service": ("edge", "run"),
        "gridwatch-bridge.service": ("bridge", "run"),
        "gridwatch-registry.service": ("registry", "serve"),
    }[name]
