"""The registry's broker session survives what a broker and a gateway can do to it: a broker
killed (SIGKILL) or stopped (SIGTERM) and started again, and messages on the registry's own
topics that it cannot read or store. Until it is back, registering, retiring, rotating and
commands answer 503; a stolen gateway must not be able to keep that going."""

from __future__ import annotations

import asyncio
import json
import signal
import ssl
import time
from pathlib import Path

import aiomqtt
import pytest

from tests.test_provisioning_security import (
    Reg,
    SecureBroker,
    dynsec_broker,  # noqa: F401 - a fixture
    installer_settings,
    registry,
)


async def register(reg: Reg, gateway: str) -> int:
    async with reg.http.post(reg.url + "/api/v1/gateways", json={"id": gateway}) as r:
        assert r.status in (201, 503), await r.text()  # 503: no broker session (yet)
        return r.status


async def register_when_back(reg: Reg, gateway: str) -> None:
    async with asyncio.timeout(10):
        while await register(reg, gateway) != 201:
            pass


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
async def test_registering_works_again_soon_after_the_broker_returns(
    dynsec_broker: SecureBroker,  # noqa: F811 - the fixture
    prefix: str, tmp_path: Path, sig: signal.Signals,
) -> None:  # fmt: skip
    b = dynsec_broker
    async with registry(tmp_path, installer_settings(b, prefix)) as reg:
        await reg.call("POST", "/api/v1/gateways", {"id": "gw-1"}, status=201)
        for round_ in range(2):  # the session comes back every time, not once
            b.mq.restart(sig)
            back = time.monotonic()
            await register_when_back(reg, f"gw-{round_ + 2}")
            assert time.monotonic() - back < 5


async def test_registering_works_again_after_a_long_broker_outage(
    dynsec_broker: SecureBroker,  # noqa: F811 - the fixture
    prefix: str, tmp_path: Path,
) -> None:  # fmt: skip
    b = dynsec_broker
    async with registry(tmp_path, installer_settings(b, prefix)) as reg:
        assert b.mq.proc is not None
        b.mq.proc.kill()
        b.mq.proc.wait(10)
        async with asyncio.timeout(10):  # the registry noticed: it answers 503
            while await register(reg, "gw-1") != 503:
                pass
        # the outage itself, long enough for the backoff to reach its cap (1 s) a few times
        await asyncio.sleep(4)
        assert await register(reg, "gw-1") == 503
        # /health names the failing part, and gives no broker address to an anonymous caller
        async with reg.http.get(reg.url + "/health", headers={"Authorization": ""}) as r:
            assert r.status == 503
            body = await r.text()
        health = json.loads(body)
        assert (health["status"], health["failing"]) == ("down", ["registry downlink"])
        (session,) = [d for d in health["dependencies"] if d["name"] == "registry downlink"]
        assert session["status"] == "down" and session["reason"].startswith("broker session "
                                                                            "lost since")  # fmt: skip
        assert health["parts"]["registry downlink"]["connected"] is False
        assert str(b.mq.port) not in body and str(b.tls_port) not in body
        b.mq.proc = None
        b.mq.start()
        back = time.monotonic()
        await register_when_back(reg, "gw-1")
        assert time.monotonic() - back < 5
        async with reg.http.get(reg.url + "/health") as r:
            assert r.status == 200
            health = await r.json()
        assert (health["status"], health["failing"]) == ("ok", [])
        assert health["parts"]["registry downlink"]["outages"] >= 1


async def _ack_as(broker: SecureBroker, gateway: str, password: str, topic: str,
                  payloads: list[bytes]) -> None:  # fmt: skip
    tls = ssl.create_default_context(cafile=str(broker.certs.ca))
    # the account and client id the registry issues (its own namespace, bound to the id)
    async with aiomqtt.Client("127.0.0.1", broker.tls_port, username=f"gw-{gateway}",
                              password=password, tls_context=tls,
                              identifier=f"gridwatch-edge-{gateway}") as box:  # fmt: skip
        for p in payloads:
            await box.publish(topic, p, qos=1)


async def acknowledged(reg: Reg, gateway: str) -> int:
    view = await reg.call("GET", f"/api/v1/gateways/{gateway}")
    return int(view["config"]["acknowledged"])


def ack(gateway: str, version: int) -> bytes:
    return json.dumps({"gateway": gateway, "version": version, "accepted": True, "ts": 1}).encode()


# what a stolen gateway box can send on its own config/ack topic
HOSTILE: list[tuple[str, bytes]] = [
    ("version above 2**63", ack("gw-h", 2**64)),
    ("not JSON", b"\xff{not json"),
    ("JSON but not an object", b"[1, 2, 3]"),
    ("a version that is not a number", ack("gw-h", 1).replace(b"1,", b'"one",', 1)),
]


@pytest.mark.parametrize(("what", "payload"), HOSTILE, ids=[h[0] for h in HOSTILE])
async def test_a_message_the_registry_cannot_read_or_store_is_dropped_not_fatal(
    dynsec_broker: SecureBroker,  # noqa: F811 - the fixture
    prefix: str, tmp_path: Path, what: str, payload: bytes, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    b = dynsec_broker
    async with registry(tmp_path, installer_settings(b, prefix)) as reg:
        gw = await reg.call("POST", "/api/v1/gateways", {"id": "gw-h"}, status=201)
        desired = (await reg.call("GET", "/api/v1/gateways/gw-h"))["config"]["desired"]
        topic = f"{prefix}/gw/gw-h/config/ack"
        await _ack_as(b, "gw-h", gw["mqtt"]["password"], topic, [payload, ack("gw-h", desired)])
        async with asyncio.timeout(10):  # the real ack after the bad one is processed
            while await acknowledged(reg, "gw-h") != desired:  # noqa: ASYNC110 - polled API
                await asyncio.sleep(0.05)
        # and the session still serves: retiring the gateway works
        await reg.call("POST", "/api/v1/gateways/gw-h/retire")
    dropped = [r for r in caplog.records if "dropped a message on" in r.getMessage()]
    assert len(dropped) == 1 and topic in dropped[0].getMessage(), caplog.text
