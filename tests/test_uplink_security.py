"""The uplink over TLS with credentials, against a real mosquitto that demands both."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridwatch.top.sim.modbus import SimField
from tests.fieldkit import gateway_config, running
from tests.services import Mosquitto
from tests.test_provisioning_security import (  # noqa: F401 - dynsec_broker: a fixture
    SecureBroker,
    dynsec_broker,
    installer_settings,
    registry,
)
from tests.tls import Certs, make_certs


@pytest.fixture
def secure_broker() -> Iterator[tuple[Mosquitto, Certs]]:
    broker = Mosquitto(Path(tempfile.mkdtemp()), users={"gw-xuhui-01": "s3cret-pass"})
    certs = make_certs(broker._rundir() / "certs")  # where mosquitto's own user can read them
    broker.extra = [f"cafile {certs.ca}", f"certfile {certs.cert}", f"keyfile {certs.key}"]
    yield broker.start(), certs
    broker.stop()


async def test_uplink_over_tls_with_password_from_environment(
    secure_broker: tuple[Mosquitto, Certs],
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker, certs = secure_broker
    monkeypatch.setenv("GW_PASSWORD", "s3cret-pass")
    cfg, devices, _ = gateway_config(
        tmp_path, broker.port, prefix, tls=True, ca_file=str(certs.ca), password_env="GW_PASSWORD"
    )
    async with SimField(devices, update_s=3600), running(cfg, devices) as agent:
        await agent.uplink.wait_until(lambda u: u.published > 0, within_s=15)
    assert agent.uplink.connected is False  # stopped cleanly


@pytest.mark.parametrize("what", ["wrong password", "untrusted CA"])
async def test_uplink_is_refused_without_the_right_secrets(
    what: str, secure_broker: tuple[Mosquitto, Certs], prefix: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    broker, certs = secure_broker
    other = make_certs(tmp_path / "other")
    monkeypatch.setenv("GW_PASSWORD", "wrong" if what == "wrong password" else "s3cret-pass")
    ca = other.ca if what == "untrusted CA" else certs.ca
    cfg, devices, _ = gateway_config(
        tmp_path, broker.port, prefix, tls=True, ca_file=str(ca), password_env="GW_PASSWORD"
    )
    async with SimField(devices, update_s=3600), running(cfg, devices) as agent:
        await agent.uplink.wait_until(lambda u: u.reconnects > 0, within_s=15)
        assert agent.uplink.published == 0
    assert "s3cret-pass" not in caplog.text  # secrets never reach the log


async def test_the_edge_logs_in_with_what_the_registry_issued_on_a_dynsec_broker(
    dynsec_broker: SecureBroker,  # noqa: F811
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The username and client id of the registry's namespace, end to end: the broker binds
    the account to ``gridwatch-edge-<id>``, so the edge must connect with exactly that id."""
    b = dynsec_broker
    async with registry(tmp_path, installer_settings(b, prefix)) as reg:
        issued = await reg.call("POST", "/api/v1/gateways", {"id": "gw-xuhui-01"}, status=201)
        generated = (await reg.call("GET", "/api/v1/gateways/gw-xuhui-01/config"))["mqtt"]
        assert generated["username"] == issued["mqtt"]["username"] == "gw-gw-xuhui-01"
        monkeypatch.setenv(generated["password_env"], issued["mqtt"]["password"])
        mqtt = {k: generated[k] for k in ("host", "port", "username", "password_env", "tls",
                                          "ca_file")}  # fmt: skip
        cfg, devices, _ = gateway_config(tmp_path, generated["port"], prefix, **mqtt)
        async with SimField(devices, update_s=3600), running(cfg, devices) as agent:
            await agent.uplink.wait_until(lambda u: u.published > 0, within_s=15)
            assert agent.uplink.reconnects == 0
