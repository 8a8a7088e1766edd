"""Per-gateway security against a real mosquitto with the dynamic-security plugin: only
registered gateways get in, each only into its own subtree, a retired one is cut off at once,
and no secret reaches a log."""

from __future__ import annotations

import asyncio
import logging
import shutil
import sqlite3
import ssl
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

from cloud_bridge import SqliteSink
from device_registry import RegistryStore
from device_registry.http.app import build_app, serving
from device_registry.inventory.configgen import Uplink
from device_registry.inventory.downlink import BrokerSettings
from device_registry.inventory.provisioning import Account, issued_ms, refusal, refused_login
from device_registry.inventory.wiring import INSTALLERS, InstallerSettings
from gridwatch.top.cli import build_parser
from tests._central_helpers import batch, bridge_config, bridge_on, now_ms, reading, until
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


def start_dynsec_broker(readable: bool = True) -> SecureBroker:
    """mosquitto with dynsec (admin user only), a plain loopback listener for the centre and a
    TLS listener for gateways. Files where the mosquitto user can read and write them, unless
    ``readable`` is False: then the dynsec folder is root's alone, the classic set-up mistake."""
    work = Path(tempfile.mkdtemp(prefix="gridwatch-dynsec-"))
    work.chmod(0o755)
    certs = make_certs(work / "certs")
    (work / "certs").chmod(0o755)
    state = work / "dynsec"
    state.mkdir()
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(state / "dynsec.json"), ADMIN_USER,
                    ADMIN_PASSWORD], check=True, capture_output=True)  # fmt: skip
    if readable:
        shutil.chown(state, "mosquitto")
        shutil.chown(state / "dynsec.json", "mosquitto")
    else:
        state.chmod(0o700)
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
    return SecureBroker(mq, tls_port, certs, work)


@pytest.fixture
def dynsec_broker() -> Iterator[SecureBroker]:
    broker = start_dynsec_broker()
    yield broker
    broker.mq.stop()
    shutil.rmtree(broker.work, ignore_errors=True)


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
    """One QoS 1 publish over TLS with MQTT 5; the PUBACK's reason code (135: not authorised).
    ``user`` is a gateway's account, which only its own client id may use."""
    done = threading.Event()
    codes: list[int] = []
    client_id = "gridwatch-edge-" + user.removeprefix("gw-")
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5, client_id=client_id)
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


async def connect_refused(
    port: int, user: str, password: str, ca: Path | None, client_id: str = ""
) -> bool:
    """``ca`` None: the centre's plain loopback listener."""
    tls = ssl.create_default_context(cafile=str(ca)) if ca else None
    try:
        async with aiomqtt.Client("127.0.0.1", port, username=user, password=password,
                                  identifier=client_id or None, tls_context=tls,
                                  timeout=5):  # fmt: skip
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
        user_a, user_b = gw_a["mqtt"]["username"], gw_b["mqtt"]["username"]
        assert (user_a, user_b) == ("gw-gw-a", "gw-gw-b")  # the registry's namespace

        # wrong credentials and unregistered gateways stay out
        assert await connect_refused(b.tls_port, user_a, "wrong", ca)
        assert await connect_refused(b.tls_port, "gw-gw-unknown", pw_a, ca)
        assert not await connect_refused(b.tls_port, user_a, pw_a, ca, "gridwatch-edge-gw-a")

        # A may publish under its own subtree; into B's it gets PUBACK 135 and B hears nothing
        tls = ssl.create_default_context(cafile=str(ca))
        async with aiomqtt.Client("127.0.0.1", b.tls_port, username=user_b, password=pw_b,
                                  tls_context=tls, identifier="gridwatch-edge-gw-b") as b_client:  # fmt: skip
            await b_client.subscribe(f"{prefix}/gw/gw-b/#", qos=1)
            assert await asyncio.to_thread(publish_as, b.tls_port, user_a, pw_a,
                                           f"{prefix}/gw/gw-a/telemetry", ca) < 128  # fmt: skip
            assert await asyncio.to_thread(publish_as, b.tls_port, user_a, pw_a,
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
        tls = ssl.create_default_context(cafile=str(ca))
        async with aiomqtt.Client("127.0.0.1", b.tls_port, username=user_a, password=pw_a,
                                  tls_context=tls, identifier="gridwatch-edge-gw-a") as a_client:  # fmt: skip
            await a_client.subscribe(f"{prefix}/gw/gw-a/cmd", qos=1)
            retired = await reg.call("POST", "/api/v1/gateways/gw-a/retire")
            assert retired["retired"] is True
            with pytest.raises(aiomqtt.MqttError):
                async with asyncio.timeout(10):
                    async for _ in a_client.messages:  # ends when the broker drops the session
                        pass
        assert await connect_refused(b.tls_port, user_a, pw_a, ca, "gridwatch-edge-gw-a")
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
        tls = ssl.create_default_context(cafile=str(ca))
        async with aiomqtt.Client("127.0.0.1", b.tls_port, username=old["username"],
                                  password=old["password"], tls_context=tls,
                                  identifier="gridwatch-edge-gw-r") as live:  # fmt: skip
            await live.subscribe(f"{prefix}/gw/gw-r/cmd", qos=1)
            rotated = await reg.call("POST", "/api/v1/gateways/gw-r/credentials")
            with pytest.raises(aiomqtt.MqttError):  # the session on the old password is cut
                async with asyncio.timeout(10):
                    async for _ in live.messages:
                        pass
        new = rotated["mqtt"]
        assert new["username"] == "gw-gw-r" and new["password"] != old["password"]
        user, edge_id = new["username"], "gridwatch-edge-gw-r"
        assert await connect_refused(b.tls_port, user, old["password"], ca, edge_id)
        assert not await connect_refused(b.tls_port, user, new["password"], ca, edge_id)
        # still confined to its own subtree
        assert await asyncio.to_thread(publish_as, b.tls_port, user, new["password"],
                                       f"{prefix}/gw/gw-x/telemetry", ca) == 135  # fmt: skip
        audit = await reg.call("GET", "/api/v1/audit?target=gateway:gw-r")
        assert [e["action"] for e in audit] == ["gateway.credentials", "gateway.register"]
        await reg.call("POST", "/api/v1/gateways/gw-r/retire")
        await reg.call("POST", "/api/v1/gateways/gw-r/credentials", status=409)  # not revived
    logs = caplog.text + b.mq.log.read_text()
    assert old["password"] not in logs and new["password"] not in logs


# ---- issue 16: the broker namespace the registry owns, and client ids bound to accounts ----


def dynsec_ctl(b: SecureBroker, *argv: str) -> str:
    """What the broker's administrator does by hand, with ``mosquitto_ctrl``; what it printed."""
    done = subprocess.run(["mosquitto_ctrl", "-h", "127.0.0.1", "-p", str(b.mq.port), "-u",
                           ADMIN_USER, "-P", ADMIN_PASSWORD, "dynsec", *argv], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return done.stdout + done.stderr


async def test_an_installer_cannot_take_over_or_delete_an_account_it_did_not_make(
    dynsec_broker: SecureBroker, prefix: str, tmp_path: Path
) -> None:
    b = dynsec_broker
    dynsec_ctl(b, "createClient", "city-platform", "-p", "platform-pw")
    dynsec_ctl(b, "createClient", "gw-city", "-p", "city-pw")  # made by hand in our namespace
    async with registry(tmp_path, installer_settings(b, prefix)) as reg:
        # the centre's own account is out of reach: the gateway gets a name of its own
        hostile = await reg.call("POST", "/api/v1/gateways", {"id": ADMIN_USER}, status=201)
        assert hostile["mqtt"]["username"] == f"gw-{ADMIN_USER}"
        config = await reg.call("GET", f"/api/v1/gateways/{ADMIN_USER}/config")
        assert config["mqtt"]["username"] == f"gw-{ADMIN_USER}"  # what the edge logs in with
        assert not await connect_refused(b.mq.port, ADMIN_USER, ADMIN_PASSWORD, None)
        await reg.call("POST", "/api/v1/gateways", {"id": "next"}, status=201)  # still in charge

        took = await reg.call("POST", "/api/v1/gateways", {"id": "city-platform"}, status=201)
        assert took["mqtt"]["username"] == "gw-city-platform"
        assert not await connect_refused(b.mq.port, "city-platform", "platform-pw", None)

        async with reg.http.post(reg.url + "/api/v1/gateways", json={"id": "city"}) as r:
            assert r.status == 409
            assert "'gw-city' exists and was not made by this registry" in await r.text()
        await reg.call("GET", "/api/v1/gateways/city", status=404)  # nothing registered
        assert not await connect_refused(b.mq.port, "gw-city", "city-pw", None)  # untouched

        # a role of that name with wider rights is not handed to a gateway either
        dynsec_ctl(b, "createRole", "gw-wide")
        dynsec_ctl(b, "addRoleACL", "gw-wide", "subscribePattern", "#", "allow")
        async with reg.http.post(reg.url + "/api/v1/gateways", json={"id": "wide"}) as r:
            assert r.status == 409
            assert "role 'gw-wide' exists with other rights" in await r.text()
        assert "not found" in dynsec_ctl(b, "getClient", "gw-wide").lower()  # nothing made
        assert "subscribePattern" in dynsec_ctl(b, "getRole", "gw-wide")  # nor changed


async def connect_code(port: int, user: str, password: str, client_id: str, ca: Path) -> int:
    """The CONNACK's reason code for this login (0: accepted; 135: not authorised)."""
    tls = ssl.create_default_context(cafile=str(ca))
    try:
        async with aiomqtt.Client("127.0.0.1", port, username=user, password=password,
                                  identifier=client_id, tls_context=tls, timeout=5,
                                  protocol=aiomqtt.ProtocolVersion.V5):  # fmt: skip
            return 0
    except aiomqtt.MqttCodeError as exc:
        return int(exc.rc) if isinstance(exc.rc, int) else int(exc.rc.value)  # type: ignore[union-attr]


async def test_a_gateway_cannot_take_the_bridges_session(
    dynsec_broker: SecureBroker, prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b, ca = dynsec_broker, dynsec_broker.certs.ca
    store = await RegistryStore.open(f"sqlite+aiosqlite:///{tmp_path}/bridge.db")
    sink = await SqliteSink.open(tmp_path / "telemetry.db", retention_hours=1)
    try:
        async with registry(tmp_path, installer_settings(b, prefix)) as reg:
            a = (await reg.call("POST", "/api/v1/gateways", {"id": "gw-a"}, status=201))["mqtt"]
            m = (await reg.call("POST", "/api/v1/gateways", {"id": "gw-m"}, status=201))["mqtt"]
            cfg = bridge_config("127.0.0.1", b.mq.port, prefix, tmp_path / "bridge",
                                mqtt_username=ADMIN_USER, mqtt_password=ADMIN_PASSWORD,
                                mqtt_protocol="5")  # fmt: skip
            async with bridge_on(cfg, store, sink) as bridge:
                for lane in ("telemetry", "events"):
                    code = await connect_code(b.tls_port, m["username"], m["password"],
                                              f"{cfg.client_id}-{lane}", ca)  # fmt: skip
                    assert code == 135, f"gateway took the bridge's {lane} session ({code})"
                # its own id still works: only the binding refused it
                assert await connect_code(b.tls_port, m["username"], m["password"],
                                          "gridwatch-edge-gw-m", ca) == 0  # fmt: skip
                tls = ssl.create_default_context(cafile=str(ca))
                async with aiomqtt.Client("127.0.0.1", b.tls_port, username=a["username"],
                                          password=a["password"], tls_context=tls,
                                          identifier="gridwatch-edge-gw-a") as gw:  # fmt: skip
                    t = now_ms()
                    for i in range(30):
                        msg = batch("gw-a", [reading("d1", "level", float(i), t + i)], seq=i + 1)
                        await gw.publish(f"{prefix}/gw/gw-a/telemetry", msg.model_dump_json(),
                                         qos=1)  # fmt: skip
                await until(bridge, lambda s: s.readings >= 30)
                assert (bridge.committed.readings, bridge.committed.missing) == (30, 0)
                assert bridge.connected.is_set()
        bridge_trouble = [r for r in caplog.records
                          if r.name.startswith("cloud_bridge") and r.levelno >= logging.WARNING]  # fmt: skip
        assert bridge_trouble == []  # its sessions were never taken over
    finally:
        await sink.close()
        await store.close()


async def test_a_gateway_registered_before_the_namespace_keeps_working_and_is_adopted(
    dynsec_broker: SecureBroker, prefix: str, tmp_path: Path
) -> None:
    b, ca = dynsec_broker, dynsec_broker.certs.ca
    async with registry(tmp_path, installer_settings(b, prefix)) as reg:
        await reg.call("POST", "/api/v1/gateways", {"id": "old"}, status=201)
        await reg.call("POST", "/api/v1/gateways", {"id": "odd"}, status=201)
        # make them what an older registry left: username = gateway id, role gw-<id>, no group
        with sqlite3.connect(tmp_path / "registry.db") as db:
            db.execute("UPDATE gateways SET settings = json_remove(settings, '$.mqtt.username')")
        for gw in ("old", "odd"):
            dynsec_ctl(b, "deleteClient", f"gw-{gw}")
            dynsec_ctl(b, "createClient", gw, "-p", "legacy-pw")
            dynsec_ctl(b, "addClientRole", gw, f"gw-{gw}")
        dynsec_ctl(b, "addClientRole", "odd", "admin")  # changed by hand since: not ours now

        assert not await connect_refused(b.tls_port, "old", "legacy-pw", ca, "anything")
        rotated = (await reg.call("POST", "/api/v1/gateways/old/credentials"))["mqtt"]
        assert rotated["username"] == "old"  # the box keeps its username
        assert await connect_code(b.tls_port, "old", rotated["password"], "anything", ca) == 135
        assert not await connect_refused(b.tls_port, "old", rotated["password"], ca,
                                         "gridwatch-edge-old")  # fmt: skip
        await reg.call("POST", "/api/v1/gateways/old/retire")
        assert await connect_refused(b.tls_port, "old", rotated["password"], ca,
                                     "gridwatch-edge-old")  # fmt: skip

        await reg.call("POST", "/api/v1/gateways/odd/retire", status=409)
        assert not await connect_refused(b.tls_port, "odd", "legacy-pw", ca, "x")  # untouched


OURS = {"groups": [{"groupname": "gridwatch-gateways"}], "roles": [{"rolename": "gw-g"}]}
LEGACY = {"groups": [], "roles": [{"rolename": "gw-g"}]}
ROLE = {"acls": [{"acltype": t, "topic": "P/gw/g/#", "allow": True}
                 for t in ("publishClientSend", "publishClientReceive", "subscribePattern",
                           "unsubscribePattern")]}  # fmt: skip


@pytest.mark.parametrize(
    ("username", "client", "role", "refused"),
    [
        ("gw-g", None, None, None),
        ("gw-g", OURS, ROLE, None),
        ("gw-g", {"groups": [], "roles": []}, None, "'gw-g' exists and was not made"),
        ("gw-g", LEGACY, ROLE, "'gw-g' exists and was not made"),  # legacy shape, new name
        ("g", LEGACY, ROLE, None),  # what an older registry made
        ("g", {"groups": [], "roles": [{"rolename": "gw-g"}, {"rolename": "admin"}]}, ROLE,
         "'g' exists and was not made"),
        ("g", {"groups": [{"groupname": "ops"}], "roles": [{"rolename": "gw-g"}]}, ROLE,
         "'g' exists and was not made"),
        ("gw-g", None, {"acls": [{"acltype": "subscribePattern", "topic": "#", "allow": True}]},
         "role 'gw-g' exists with other rights"),
        ("gw-g", None, {"acls": []}, "role 'gw-g' exists with other rights"),
    ],
)  # fmt: skip
def test_which_accounts_the_registry_may_touch(
    username: str, client: dict[str, Any] | None, role: dict[str, Any] | None, refused: str | None
) -> None:
    why = refusal("P", Account("g", username), client, role)
    assert (why is None) if refused is None else (why is not None and refused in why), why


@pytest.mark.parametrize(
    ("settings", "username", "legacy"),
    [
        ({"username": "gw-g"}, "gw-g", False),
        ({"host": "h"}, "g", True),
        (None, "g", True),
    ],
)
def test_the_account_a_gateways_stored_settings_name(
    settings: dict[str, Any] | None, username: str, legacy: bool
) -> None:
    account = Account.of("g", settings)
    assert (account.username, account.legacy) == (username, legacy)


async def test_a_dynsec_file_mosquitto_cannot_read_is_said_in_words(
    prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = start_dynsec_broker(readable=False)
    logged = asyncio.Event()
    watch = logging.Handler()
    watch.emit = lambda r: logged.set() if "refused the registry" in r.getMessage() else None  # type: ignore[method-assign]
    logging.getLogger("gridwatch.ground.mqttsession").addHandler(watch)
    try:
        app = build_app(f"sqlite+aiosqlite:///{tmp_path}/registry.db",
                        installers=installer_settings(b, prefix))  # fmt: skip
        async with serving(app, "127.0.0.1", 0), asyncio.timeout(10):
            await logged.wait()
        said = [r.getMessage() for r in caplog.records if "refused the registry" in r.getMessage()]
        assert said[0] == (
            f"mqtt registry downlink: 127.0.0.1:{b.mq.port} cannot connect: "
            f"the broker at 127.0.0.1:{b.mq.port} refused the registry's login "
            f"as '{ADMIN_USER}' (CONNACK 135, not authorised): check --broker-admin-user and the "
            "password in its environment variable; with --dynsec, check that user 'mosquitto' can "
            "read the file named by plugin_opt_config_file and enter every folder above it "
            "(mosquitto's own log then says 'Error loading Dynamic security plugin config'), see "
            "docs/registry.md"
        )
        # the broker's own words that the docs tell the reader to look for
        assert "Error loading Dynamic security plugin config" in b.mq.log.read_text()
    finally:
        logging.getLogger("gridwatch.ground.mqttsession").removeHandler(watch)
        b.mq.stop()
        shutil.rmtree(b.work, ignore_errors=True)


@pytest.mark.parametrize(
    ("code", "words"),
    [(135, "(CONNACK 135, not authorised)"), (134, "(CONNACK 134, bad username or password)"),
     (5, "(CONNACK 5, not authorised)"), (4, "(CONNACK 4, bad username or password)"),
     (0, None), (136, None), (128, None)],
)  # fmt: skip
def test_which_connacks_are_a_refused_login(code: int, words: str | None) -> None:
    said = refused_login("admin", "h:1", code)
    assert (said is None) if words is None else (said is not None and words in said)


@pytest.mark.parametrize(
    ("bridge_id", "ok"),
    [("gridwatch-bridge", True), ("bridge-north", True), ("gridwatch-edgy", True),
     ("gridwatch-edge-x", False), ("gridwatch-edge-", False), ("", False)],
)  # fmt: skip
def test_a_bridge_id_in_the_gateways_client_id_space_is_refused(
    bridge_id: str, ok: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = build_parser()
    argv = ["bridge", "run", "--bridge-id", bridge_id]
    if ok:
        assert parser.parse_args(argv).bridge_id == bridge_id
        return
    with pytest.raises(SystemExit):
        parser.parse_args(argv)
    assert "the client ids of gateways" in capsys.readouterr().err


async def test_two_registrations_of_one_id_at_once_leave_one_working_account(
    dynsec_broker: SecureBroker, prefix: str, tmp_path: Path
) -> None:
    b, ca = dynsec_broker, dynsec_broker.certs.ca
    async with registry(tmp_path, installer_settings(b, prefix)) as reg:

        async def register() -> tuple[int, Any]:
            async with reg.http.post(reg.url + "/api/v1/gateways", json={"id": "dup"}) as r:
                return r.status, await r.json()

        answers = sorted(await asyncio.gather(register(), register()), key=lambda a: a[0])
        assert [status for status, _ in answers] == [201, 409]
        won, lost = answers[0][1], answers[1][1]
        assert "'dup' is" in lost["detail"], lost
        assert not await connect_refused(b.tls_port, "gw-dup", won["mqtt"]["password"], ca,
                                         "gridwatch-edge-dup")  # fmt: skip
        await reg.call("GET", "/api/v1/gateways/dup")


async def test_an_account_left_by_a_registration_that_failed_half_way_is_replaced(
    dynsec_broker: SecureBroker, prefix: str, tmp_path: Path
) -> None:
    b, ca = dynsec_broker, dynsec_broker.certs.ca
    async with registry(tmp_path, installer_settings(b, prefix)) as reg:
        await reg.call("POST", "/api/v1/gateways", {"id": "first"}, status=201)  # makes the group
        # what a registry that crashed between the broker and its commit leaves behind
        dynsec_ctl(b, "createClient", "gw-left", "-p", "stale-pw")
        dynsec_ctl(b, "addGroupClient", "gridwatch-gateways", "gw-left")
        issued = await reg.call("POST", "/api/v1/gateways", {"id": "left"}, status=201)
        password = issued["mqtt"]["password"]
        assert await connect_refused(b.tls_port, "gw-left", "stale-pw", ca, "gridwatch-edge-left")
        assert not await connect_refused(b.tls_port, "gw-left", password, ca, "gridwatch-edge-left")


@pytest.mark.parametrize(
    ("textname", "issued"),
    [("gridwatch gateway account, issued at 1700000000000", 1_700_000_000_000),
     (None, 0), ("", 0), ("made by hand", 0), ("gridwatch gateway account, issued at soon", 0)],
)  # fmt: skip
def test_when_the_registry_made_an_account(textname: str | None, issued: int) -> None:
    assert issued_ms({"textname": textname}) == issued


async def test_a_gateway_hears_the_centres_acks_and_no_other_gateways(
    dynsec_broker: SecureBroker, prefix: str, tmp_path: Path
) -> None:
    """The bridge acknowledges what it committed on ``P/gw/G/ack``: the gateway's role lets it
    subscribe there; another gateway subscribing to the same topic (or to every gateway's)
    is granted by the broker and hears nothing."""
    b, ca = dynsec_broker, dynsec_broker.certs.ca
    store = await RegistryStore.open(f"sqlite+aiosqlite:///{tmp_path}/bridge.db")
    sink = await SqliteSink.open(tmp_path / "telemetry.db", retention_hours=1)

    def client(account: dict[str, str], gateway: str) -> aiomqtt.Client:
        return aiomqtt.Client(
            "127.0.0.1", b.tls_port, username=account["username"], password=account["password"],
            tls_context=ssl.create_default_context(cafile=str(ca)),
            identifier=f"gridwatch-edge-{gateway}", protocol=aiomqtt.ProtocolVersion.V5,
        )  # fmt: skip

    try:
        async with registry(tmp_path, installer_settings(b, prefix)) as reg:
            a = (await reg.call("POST", "/api/v1/gateways", {"id": "gw-a"}, status=201))["mqtt"]
            e = (await reg.call("POST", "/api/v1/gateways", {"id": "gw-e"}, status=201))["mqtt"]
            cfg = bridge_config("127.0.0.1", b.mq.port, prefix, tmp_path / "bridge",
                                mqtt_username=ADMIN_USER, mqtt_password=ADMIN_PASSWORD,
                                mqtt_protocol="5")  # fmt: skip
            async with (
                bridge_on(cfg, store, sink),
                client(a, "gw-a") as gw,
                client(e, "gw-e") as eve,
            ):
                await gw.subscribe(f"{prefix}/gw/gw-a/ack", qos=1)
                await eve.subscribe(f"{prefix}/gw/gw-a/ack", qos=1)
                await eve.subscribe(f"{prefix}/gw/+/ack", qos=1)
                await eve.subscribe(f"{prefix}/gw/gw-e/ack", qos=1)
                heard: dict[str, list[str]] = {"gw-a": [], "gw-e": []}
                # one after the other: gw-a's ack is out before gw-e's is even asked for, so
                # gw-e, one broker and one order per subscriber, would hear it first
                for name, c in (("gw-a", gw), ("gw-e", eve)):
                    msg = batch(name, [reading("d1", "level", 1.0, now_ms())], seq=5)
                    await c.publish(f"{prefix}/gw/{name}/telemetry", msg.model_dump_json(), qos=1)
                    async with asyncio.timeout(15):
                        async for m in c.messages:
                            heard[name].append(str(m.topic))
                            if str(m.topic).endswith(f"/{name}/ack"):
                                break
                assert heard == {"gw-a": [f"{prefix}/gw/gw-a/ack"],
                                 "gw-e": [f"{prefix}/gw/gw-e/ack"]}  # fmt: skip
    finally:
        await sink.close()
        await store.close()
