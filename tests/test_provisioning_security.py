"""Per-gateway security against a real mosquitto with the dynamic-security plugin: only
registered gateways get in, each only into its own subtree, a retired one is cut off at once,
and no secret reaches a log."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import paho.mqtt.client as paho
import pytest

from device_registry.http.app import build_app, serving
from device_registry.inventory.configgen import Uplink
from device_registry.inventory.downlink import BrokerSettings
from device_registry.inventory.wiring import INSTALLERS, InstallerSettings
from tests.conftest import ADMIN_TOKEN
from tests.services import Mosquitto, free_port
from tests.tls import Certs, make_certs

DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"
ADMIN_USER, ADMIN_PASSWORD = "registry-admin", "admin-secret-pw"


@dataclass
class SecureBroker:
    mq: Mosquitto
    tls_port: int
    certs: Certs
    work: Path


@pytest.fixture
def dynsec_broker() -> Iterator[SecureBroker]:
    """mosquitto with dynsec (admin user only), a plain loopback listener for the centre and a
    TLS listener for gateways. Files where the mosquitto user can read and write them."""
    work = Path(tempfile.mkdtemp(prefix="gridwatch-dynsec-"))
    work.chmod(0o755)
    certs = make_certs(work / "certs")
    (work / "certs").chmod(0o755)
    state = work / "dynsec"
    state.mkdir()
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(state / "dynsec.json"), ADMIN_USER,
                    ADMIN_PASSWORD], check=True, capture_output=True)  # fmt: skip
    shutil.chown(state, "mosquitto")
    shutil.chown(state / "dynsec.json", "mosquitto")
    tls_port = free_port()
    mq = Mosquitto(
        work / "mq",
        extra=[
            "allow_anonymous false", f"plugin {DYNSEC}",
            f"plugin_opt_config_file {state / 'dynsec.json'}",
            "log_type all",
            f"listener {tls_port} 127.0.0.1",
            f"cafile {certs.ca}", f"certfile {certs.cert}", f"keyfile {certs.key}",
        ],
    ).start()  # fmt: skip
    yield SecureBroker(mq, tls_port, certs, work)
    mq.stop()
    shutil.rmtree(work, ignore_errors=True)


def installer_settings(broker: SecureBroker, prefix: str) -> InstallerSettings:
    return InstallerSettings(
        uplink=Uplink(host="127.0.0.1", port=broker.tls_port, prefix=prefix, tls=True,
                      ca_file=str(broker.certs.ca)),
        broker=BrokerSettings(host="127.0.0.1", port=broker.mq.port, prefix=prefix,
                              username=ADMIN_USER, password=ADMIN_PASSWORD,
                              client_id=f"registry-{prefix}", protocol="5"),
        dynsec=True,
    )  # fmt: skip


@dataclass
class Reg:
    url: str
    http: aiohttp.ClientSession

    async def call(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        async with self.http.request(method, self.url + path, json=body) as r:
            assert r.status == status, await r.text()
            return await r.json()


@asynccontextmanager
async def registry(tmp_path: Path, settings: InstallerSettings) -> AsyncIterator[Reg]:
    app = build_app(f"sqlite+aiosqlite:///{tmp_path}/registry.db", installers=settings)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with serving(app, "127.0.0.1", 0) as url, aiohttp.ClientSession(headers=headers) as http:
        downlink = app[INSTALLERS].downlink
        assert downlink is not None
        async with asyncio.timeout(10):
            await downlink.ready.wait()
        yield Reg(url, http)


def publish_as(port: int, user: str, password: str, topic: str, ca: Path) -> int:
    """One QoS 1 publish over TLS with MQTT 5; the PUBACK's reason code (135: not authorised)."""
    done = threading.Event()
    codes: list[int] = []
    c = paho.Client(
        paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id=f"probe-{user}"
    )
    c.username_pw_set(user, password)
    c.tls_set(ca_certs=str(ca))
    c.on_publish = lambda _c, _u, _mid, rc, _p: (codes.append(rc.value), done.set())  # type: ignore[func-returns-value]
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        c.publish(topic, b'{"x":1}', qos=1)
        assert done.wait(10), "no PUBACK"
    finally:
        c.disconnect()
        c.loop_stop()
    return codes[0]


async def connect_refused(port: int, user: str, password: str, ca: Path) -> bool:
    import ssl

    tls = ssl.create_default_context(cafile=str(ca))
    try:
        async with aiomqtt.Client("127.0.0.1", port, username=user, password=password,
                                  tls_context=tls, timeout=5):  # fmt: skip
            return False
    except aiomqtt.MqttError:
        return True


async def test_gateways_are_admitted_confined_and_cut_off(
    dynsec_broker: SecureBroker, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b, ca = dynsec_broker, dynsec_broker.certs.ca
    async with registry(tmp_path, installer_settings(b, prefix)) as reg:
        gw_a = await reg.call("POST", "/api/v1/gateways", {"id": "gw-a"}, status=201)
        gw_b = await reg.call("POST", "/api/v1/gateways", {"id": "gw-b"}, status=201)
        pw_a, pw_b = gw_a["mqtt"]["password"], gw_b["mqtt"]["password"]

        # wrong credentials and unregistered gateways stay out
        assert await connect_refused(b.tls_port, "gw-a", "wrong", ca)
        assert await connect_refused(b.tls_port, "gw-unknown", pw_a, ca)
        assert not await connect_refused(b.tls_port, "gw-a", pw_a, ca)

        # A may publish under its own subtree; into B's it gets PUBACK 135 and B hears nothing
        tls = __import__("ssl").create_default_context(cafile=str(ca))
        async with aiomqtt.Client("127.0.0.1", b.tls_port, username="gw-b", password=pw_b,
                                  tls_context=tls, identifier="b-listener") as b_client:  # fmt: skip
            await b_client.subscribe(f"{prefix}/gw/gw-b/#", qos=1)
            assert await asyncio.to_thread(publish_as, b.tls_port, "gw-a", pw_a,
                                           f"{prefix}/gw/gw-a/telemetry", ca) < 128  # fmt: skip
            assert await asyncio.to_thread(publish_as, b.tls_port, "gw-a", pw_a,
                                           f"{prefix}/gw/gw-b/telemetry", ca) == 135  # fmt: skip
            await b_client.publish(f"{prefix}/gw/gw-b/marker", b"end", qos=1)
            async with asyncio.timeout(10):
                heard = []
                async for m in b_client.messages:
                    heard.append(str(m.topic))
                    if str(m.topic).endswith("/marker"):
                        break
            # B's retained config is there too; A's forged telemetry is not
            assert f"{prefix}/gw/gw-b/telemetry" not in heard

        # retiring A cuts its live session at once and keeps it out
        tls = __import__("ssl").create_default_context(cafile=str(ca))
        async with aiomqtt.Client("127.0.0.1", b.tls_port, username="gw-a", password=pw_a,
                                  tls_context=tls, identifier="a-live") as a_client:  # fmt: skip
            await a_client.subscribe(f"{prefix}/gw/gw-a/cmd", qos=1)
            retired = await reg.call("POST", "/api/v1/gateways/gw-a/retire")
            assert retired["retired"] is True
            with pytest.raises(aiomqtt.MqttError):
                async with asyncio.timeout(10):
                    async for _ in a_client.messages:  # ends when the broker drops the session
                        pass
        assert await connect_refused(b.tls_port, "gw-a", pw_a, ca)
        audit = await reg.call("GET", "/api/v1/audit?target=gateway:gw-a")
        assert [e["action"] for e in audit] == ["gateway.retire", "gateway.register"]

    # no secret in our log or the broker's
    logs = caplog.text + b.mq.log.read_text()
    for secret in (pw_a, pw_b, ADMIN_PASSWORD, ADMIN_TOKEN):
        assert secret not in logs


async def test_a_leaked_password_is_rotated_the_old_one_stops_at_once(
    dynsec_broker: SecureBroker, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b, ca = dynsec_broker, dynsec_broker.certs.ca
    async with registry(tmp_path, installer_settings(b, prefix)) as reg:
        old = (await reg.call("POST", "/api/v1/gateways", {"id": "gw-r"}, status=201))["mqtt"]
        tls = __import__("ssl").create_default_context(cafile=str(ca))
        async with aiomqtt.Client("127.0.0.1", b.tls_port, username="gw-r",
                                  password=old["password"], tls_context=tls,
                                  identifier="r-live") as live:  # fmt: skip
            await live.subscribe(f"{prefix}/gw/gw-r/cmd", qos=1)
            rotated = await reg.call("POST", "/api/v1/gateways/gw-r/credentials")
            with pytest.raises(aiomqtt.MqttError):  # the session on the old password is cut
                async with asyncio.timeout(10):
                    async for _ in live.messages:
                        pass
        new = rotated["mqtt"]
        assert new["username"] == "gw-r" and new["password"] != old["password"]
        assert await connect_refused(b.tls_port, "gw-r", old["password"], ca)
        assert not await connect_refused(b.tls_port, "gw-r", new["password"], ca)
        # still confined to its own subtree
        assert await asyncio.to_thread(publish_as, b.tls_port, "gw-r", new["password"],
                                       f"{prefix}/gw/gw-x/telemetry", ca) == 135  # fmt: skip
        audit = await reg.call("GET", "/api/v1/audit?target=gateway:gw-r")
        assert [e["action"] for e in audit] == ["gateway.credentials", "gateway.register"]
        await reg.call("POST", "/api/v1/gateways/gw-r/retire")
        await reg.call("POST", "/api/v1/gateways/gw-r/credentials", status=409)  # not revived
    logs = caplog.text + b.mq.log.read_text()
    assert old["password"] not in logs and new["password"] not in logs
