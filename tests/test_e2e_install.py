"""End to end, as an installer does it: register a gateway and its devices with the CLI, start
the edge agent with the credentials it was issued, see its config delivered and acknowledged,
commission a device, send it a command.

Real mosquitto with dynamic security (gateways on a TLS listener), the central platform as its
own process serving its API over HTTPS, the edge agent as its own process, the Modbus devices
simulated in this process.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from gridwatch.top.sim.modbus import SimField
from tests.conftest import ADMIN_TOKEN
from tests.fieldkit import gateway_config
from tests.services import free_port
from tests.test_provisioning_security import (  # noqa: F401 - the fixture is used by name
    ADMIN_PASSWORD,
    ADMIN_USER,
    SecureBroker,
    dynsec_broker,
)

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Central:
    url: str
    ca: Path
    log: Path


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture
def central(dynsec_broker: SecureBroker, prefix: str, tmp_path: Path) -> Iterator[Central]:  # noqa: F811
    b = dynsec_broker
    port = free_port()
    log = tmp_path / "central.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gridwatch.top.cli", "central", "run",
             "--data-dir", str(tmp_path / "central"), "--http-port", str(port),
             "--mqtt-host", "127.0.0.1", "--mqtt-port", str(b.mq.port), "--prefix", prefix,
             "--bridge-id", f"bridge-{prefix}", "--mqtt-username", ADMIN_USER,
             "--mqtt-password-env", "MQ_ADMIN_PW", "--dynsec",
             "--gateway-mqtt-port", str(b.tls_port), "--gateway-mqtt-ca", str(b.certs.ca),
             "--tls-cert", str(b.certs.cert), "--tls-key", str(b.certs.key)],
            stdout=out, stderr=subprocess.STDOUT, env=_env(MQ_ADMIN_PW=ADMIN_PASSWORD),
        )  # fmt: skip
    deadline = time.monotonic() + 20
    while b"bridge subscribed" not in log.read_bytes():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    yield Central(f"https://127.0.0.1:{port}", b.certs.ca, log)
    proc.terminate()
    assert proc.wait(15) == 0, log.read_text()
    assert "Traceback" not in log.read_text(), log.read_text()


async def cli(c: Central, token: str, *argv: str) -> tuple[int, str]:
    """``gridwatch ...`` as its own process, the way an installer runs it."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridwatch.top.cli", *argv, "--url", c.url, "--ca-file", str(c.ca),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env=_env(GRIDWATCH_TOKEN=token),
    )  # fmt: skip
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


async def until_cli(c: Central, token: str, argv: list[str], ok: Any, within_s: float = 30) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        code, out = await cli(c, token, *argv, "--json")
        body = json.loads(out) if code == 0 else None
        if body is not None and ok(body):
            return body
        assert time.monotonic() < deadline, f"not there after {within_s}s: {out}"
        await asyncio.sleep(0.3)


def new_token(c: Central, admin: str, role: str) -> str:
    req = urllib.request.Request(
        f"{c.url}/api/v1/tokens", method="POST",
        data=json.dumps({"name": f"{role}-anna", "role": role}).encode(),
        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"},
    )  # fmt: skip
    ctx = ssl.create_default_context(cafile=str(c.ca))
    with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
        token: str = json.loads(r.read())["token"]
        return token


def start_edge(workdir: Path, log: Path, password: str) -> subprocess.Popen[bytes]:
    """``gridwatch edge run`` on the config the CLI wrote, the password in its environment."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gridwatch.top.cli", "edge", "run", "-c", "gateway.yaml"],
            cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
            env=_env(GRIDWATCH_MQTT_PASSWORD=password),
        )  # fmt: skip


async def test_installer_registers_commissions_and_commands(
    central: Central, prefix: str, tmp_path: Path
) -> None:
    modbus_port = free_port()
    (tmp_path / "sim").mkdir()
    _, sim_devices, _ = gateway_config(tmp_path / "sim", 1, prefix, modbus_port=modbus_port)
    admin = ADMIN_TOKEN
    code, _ = await cli(central, admin, "gateway", "frobnicate")
    assert code == 2  # usage
    # the admin hands out an installer's and an operator's token
    installer = await asyncio.to_thread(new_token, central, admin, "installer")
    operator = await asyncio.to_thread(new_token, central, admin, "operator")

    gw = "gw-e2e"
    code, out = await cli(
        central, installer, "gateway", "add", gw, "--district", "310104", "--grid", "310104014024001",
        "--bus", f"type=modbus_tcp,id=cabinet,host=127.0.0.1,port={modbus_port},timeout_s=0.5",
        "--write-config", str(tmp_path / "gateway.yaml"),
    )  # fmt: skip
    assert code == 0, out
    password = next(
        line.split()[2] for line in out.splitlines() if line.startswith("MQTT password")
    )
    # an operator may not register anything (refused: 4); an unreachable registry is 3, retry
    # later (docs/cli.md)
    code, out = await cli(
        central, operator, "device", "add", gw, "x", "--profile", "p", "--bus", "b"
    )
    assert code == 4 and "403" in out
    code, _ = await cli(
        Central("https://127.0.0.1:1", central.ca, central.log), installer, "gateway", "list"
    )
    assert code == 3

    edge_log = tmp_path / "edge.log"
    async with SimField(sim_devices, update_s=3600):
        edge = start_edge(tmp_path, edge_log, password)
        try:
            await until_cli(central, installer, ["gateway", "show", gw], lambda g: g["online"])
            for dev, profile, unit in (("wl-001", "water-level-ultrasonic", "1"),
                                       ("sd-001", "smoke-detector-modbus", "3")):  # fmt: skip
                code, out = await cli(central, installer, "device", "add", gw, dev, "--profile",
                                      profile, "--bus", "cabinet", "--unit-id", unit,
                                      "--install-date", "2026-11-27")  # fmt: skip
                assert code == 0, out
            # a device on a bus the gateway does not have: refused with the field's name
            code, out = await cli(central, installer, "device", "add", gw, "wl-009", "--profile",
                                  "water-level-ultrasonic", "--bus", "nope")  # fmt: skip
            assert code == 4 and "bus" in out, out  # refused (422): docs/cli.md

            shown = await until_cli(central, installer, ["gateway", "show", gw],
                                    lambda g: g["config"]["acknowledged"] == 3)  # fmt: skip
            assert shown["config"] == {**shown["config"], "desired": 3, "accepted": True,
                                       "errors": []}  # fmt: skip

            code, out = await cli(central, installer, "device", "commission", f"{gw}:wl-001",
                                  "--timeout", "30")  # fmt: skip
            assert code == 0, out
            assert "commissioned" in out and "good" in out

            code, out = await cli(central, operator, "device", "command", f"{gw}:sd-001",
                                  "sounder", "true")  # fmt: skip
            assert code == 0 and ": ok" in out, out
            code, out = await cli(central, operator, "device", "command", f"{gw}:sd-001",
                                  "obscuration", "1")  # fmt: skip
            assert code == 4 and "not writable" in out, out  # the registry refuses it (422)

            # the box was stolen: a new password; the gateway drops offline until it has it
            code, out = await cli(central, installer, "gateway", "new-password", gw)
            assert code == 0, out
            rotated = next(
                line.split()[2] for line in out.splitlines() if line.startswith("MQTT password")
            )
            assert rotated != password
            await until_cli(central, installer, ["gateway", "show", gw],
                            lambda g: not g["online"])  # fmt: skip
        finally:
            edge.terminate()
            edge.wait(15)
    logs = central.log.read_text() + edge_log.read_text()
    for secret in (password, rotated, installer, operator, ADMIN_PASSWORD):
        assert secret not in logs
