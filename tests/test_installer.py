"""The commissioning check (pure): values that look like a byte-order mistake are flagged with
what they would read under the other layouts; sane values pass. And, against a real registry,
`device commission` (a device in alarm is shown with its alerts, never as simply good), the
installer's ``gateway edit`` (a bus's settings, name, location, labels) and ``gateway list``."""

from __future__ import annotations

import argparse
import asyncio
import json
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from device_registry import Changes, RegistryStore
from device_registry.http.app import build_app, serving
from device_registry.http.auth import SYSTEM, Role, TokenRequest, issue
from device_registry.inventory.wiring import InstallerSettings
from drivers.codec import decode
from gridwatch.ground.contract import (
    AlertEvent,
    AlertState,
    Birth,
    Location,
    Reading,
    Severity,
    new_id,
)
from gridwatch.ground.profiles import ModbusPoint, ValueRange
from gridwatch.top.cli import main as cli
from gridwatch.top.exits import REFUSED
from gridwatch.top.installer import (
    Api,
    byte_order_alternatives,
    check_reading,
    commission,
    config_said,
)
from tests._ops_helpers import now_ms
from tests._ops_helpers import registry as ops_registry

LEVEL_CDAB = ModbusPoint(table="input", address=0, data_type="float32", word_order="little",
                         unit="m", range=ValueRange(min=-0.5, max=20))  # fmt: skip
LEVEL_ABCD = ModbusPoint(table="input", address=0, data_type="float32", unit="m",
                         range=ValueRange(min=-0.5, max=20))  # fmt: skip
FLOW_U32 = ModbusPoint(table="holding", address=0, data_type="uint32", scale=0.01,
                       range=ValueRange(min=0, max=1000))  # fmt: skip
TEMP = ModbusPoint(table="input", address=2, data_type="int16", scale=0.1,
                   range=ValueRange(min=-20, max=70))  # fmt: skip


def wrongly_read(point: ModbusPoint, true_value: float) -> float:
    """The device sends ABCD/big words; ``point`` decodes them as configured."""
    words = list(struct.unpack(">2H", struct.pack(">f", true_value)))
    value, _ = decode(words, point)
    assert isinstance(value, float)
    return value


CASES = [
    # (point, value, quality, words expected in the notes; [] = no notes)
    (LEVEL_CDAB, 1.5, "good", []),
    (
        LEVEL_CDAB,
        wrongly_read(LEVEL_CDAB, 1.5),
        "good",
        ["byte-order mistake", "ABCD would read 1.5"],
    ),
    (LEVEL_ABCD, 0.0, "good", []),
    # 500.00 sent low word first, read high word first: 32768000.0; CDAB reads it right
    (FLOW_U32, 32768000.0, "good", ["byte-order mistake", "CDAB would read 500"]),
    (FLOW_U32, 5000.0, "good", ["implausible value"]),  # out of range under every layout
    (TEMP, 21.5, "good", []),
    (TEMP, None, "comm_error", ["quality comm_error"]),
    (LEVEL_CDAB, None, "out_of_range", ["quality out_of_range", "probe modbus --address 0"]),
]


@pytest.mark.parametrize(("point", "value", "quality", "words"), CASES)
def test_check_reading(
    point: ModbusPoint, value: float | None, quality: str, words: list[str]
) -> None:
    notes = "; ".join(check_reading(point, value, quality))
    if not words:
        assert notes == ""
    for w in words:
        assert w in notes


def test_single_register_points_have_no_alternatives() -> None:
    assert byte_order_alternatives(TEMP, 21.5) == []
    layouts = {a.layout for a in byte_order_alternatives(LEVEL_ABCD, 1.5)}
    assert layouts == {"CDAB", "BADC", "DCBA"}


# ---- `device commission` against a real registry ----------------------------------------------


@pytest.mark.parametrize(
    ("name", "alarm", "last_line"),
    [
        ("in alarm: the alert is named, the device is not called simply good", True,
         "commissioned: every value reads correctly, but the device is in alarm (1 alert above): "
         "confirm on site whether it is real"),
        ("no alert: good", False, "commissioned: every value is good, no alert active"),
    ],
)  # fmt: skip
async def test_commission_names_the_active_alerts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, alarm: bool, last_line: str
) -> None:
    now = now_ms()
    level = 2.0 if alarm else 1.2
    reading = Reading(device="wl-001", point="level", value=level, unit="m", ts=now)
    ch = Changes(now=now, status=[Birth(gateway="gw1", session=1, ts=now, devices=["wl-001"])])
    ch.latest[("gw1", "wl-001", "level")] = reading
    ch.device_seen[("gw1", "wl-001")] = now
    if alarm:
        ch.alerts.append(
            AlertEvent(
                id=new_id(),
                gateway="gw1",
                seq=1,
                session=1,
                alert_id="gw1:wl-001:level_high:1",
                state=AlertState.RAISED,
                rule="level_high",
                category="040401",
                severity=Severity.MAJOR,
                device="wl-001",
                point="level",
                location=Location(),
                value=2.0,
                threshold=1.8,
                unit="m",
                message="Water level above warning line",
                raised_at=now,
                ts=now,
            )
        )
    async with ops_registry(tmp_path) as reg:
        await reg.store.apply(ch)
        args = argparse.Namespace(url=reg.url, token=reg.tokens[Role.INSTALLER], ca_file=None)
        async with Api(args) as api:
            code = await commission(api, "gw1:wl-001", timeout=5)
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out
    assert out[-1] == last_line, name
    alarm_lines = [line for line in out if "IN ALARM" in line]
    expected = ["  IN ALARM: major 040401 on level: Water level above warning line: "
                "2 m"] if alarm else []  # fmt: skip
    assert alarm_lines == expected, out


# ---- against a registry: gateway edit, gateway list ------------------------------------------


@dataclass
class Registry:
    url: str
    token: str
    capsys: pytest.CaptureFixture[str]

    async def cli(self, *args: str) -> tuple[int, str, str]:
        """``gridwatch ARGS`` against this registry: exit code, stdout, stderr."""
        self.capsys.readouterr()
        code = await asyncio.to_thread(cli, [*args, "--url", self.url, "--token", self.token])
        out, err = self.capsys.readouterr()
        return code, out, err

    async def gateway(self, gw: str) -> dict[str, Any]:
        code, out, err = await self.cli("gateway", "show", gw, "--json")
        assert code == 0, err
        found: dict[str, Any] = json.loads(out)
        return found


@pytest.fixture
async def registry(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> AsyncIterator[Registry]:
    store = await RegistryStore.open(f"sqlite+aiosqlite:///{tmp_path}/registry.db")
    token = (await issue(store, TokenRequest(name="ines", role=Role.INSTALLER), SYSTEM)).token
    app = build_app(store=store, installers=InstallerSettings())
    try:
        async with serving(app, "127.0.0.1", 0) as url:
            yield Registry(url, token, capsys)
    finally:
        await store.close()


GAS = ("device", "add", "gw-xh-12", "gd-001", "--profile", "gas-detector", "--bus", "cabinet",
       "--unit-id", "6")  # fmt: skip


async def test_a_gas_detector_refused_for_the_bus_timeout_goes_in_after_gateway_edit(
    registry: Registry,
) -> None:
    """The bus left at its default timeout (1 s), as an installer following the docs leaves it:
    the refusal names the command that fixes it, and that command does."""
    code, _, err = await registry.cli("gateway", "add", "gw-xh-12", "--district", "310104",
                                      "--grid", "310104014024001",
                                      "--bus", "type=modbus_tcp,id=cabinet,host=10.0.0.5")  # fmt: skip
    assert code == 0, err
    code, _, err = await registry.cli(*GAS)
    assert code == REFUSED  # 422
    fix = "gridwatch gateway edit gw-xh-12 --bus cabinet --timeout 0.5"
    assert fix in err and "gas device 'gd-001' (gas-detector) is read every 1 s" in err, err
    code, out, err = await registry.cli(*fix.split()[1:])
    assert code == 0, err
    assert "config v2 goes to the gateway now" in out, out
    code, _, err = await registry.cli(*GAS)
    assert code == 0, err
    gw = await registry.gateway("gw-xh-12")
    assert (gw["devices"], gw["config"]["desired"]) == (1, 3)

    # name and location: given parts merged into what it has, its own coordinates kept
    code, _, err = await registry.cli("gateway", "edit", "gw-xh-12", "--name", "Cabinet 12",
                                      "--street", "漕溪北路", "--lat", "31.1931",
                                      "--lon", "121.4372", "--label", "crew=north")  # fmt: skip
    assert code == 0, err
    code, _, err = await registry.cli("gateway", "edit", "gw-xh-12", "--grid", "310104003019001")
    assert code == 0, err
    gw = await registry.gateway("gw-xh-12")
    assert (gw["name"], gw["labels"], gw["coordinates"]) == ("Cabinet 12", {"crew": "north"},
                                                             "gateway")  # fmt: skip
    assert gw["location"] == {"district": "310104", "street": "漕溪北路", "grid": "310104003019001",
                              "lat": 31.1931, "lon": 121.4372}  # fmt: skip


# (gateway edit's arguments, exit code, words of what it prints on stderr): a 422 is refused, 4
# (docs/cli.md)
EDITS = [
    ((), 2, "nothing to change"),
    (("--timeout", "0.5"), 2, "--timeout: name the bus to change with --bus ID"),
    (("--bus", "cabinet"), 2, "say what to change"),
    (("--bus", "rs485", "--timeout", "0.5"), REFUSED, "has no bus 'rs485' (its buses: 'cabinet')"),
    (("--bus", "cabinet", "--timeout", "-1"), REFUSED, "timeout_s"),
    (("--bus", "cabinet", "--type", "mqtt"), REFUSED, "a bus keeps its type"),
    (("--bus", "cabinet", "--timeout", "5"), REFUSED, "--timeout 1"),  # a 2 s gauge on it
    (("--bus", "rtu", "--type", "modbus_rtu"), REFUSED, "port"),  # a serial bus needs its port
    (("--bus", "x" * 129, "--type", "mqtt"), REFUSED, "a bus id is 1 to 128 letters"),
    (("--bus", "rtu", "--type", "modbus_rtu", "--port", "/dev/ttyUSB0"), 0, ""),
    (("--bus", "cabinet", "--host", "10.0.0.9", "--port", "5020"), 0, ""),
]


@pytest.mark.parametrize(("args", "code", "words"), EDITS)
async def test_gateway_edit(
    registry: Registry, args: tuple[str, ...], code: int, words: str
) -> None:
    done, _, err = await registry.cli("gateway", "add", "gw-1",
                                      "--bus", "type=modbus_tcp,id=cabinet,host=10.0.0.5,timeout_s=0.5")  # fmt: skip
    assert done == 0, err
    done, _, err = await registry.cli("device", "add", "gw-1", "wl-1", "--profile",
                                      "water-level-ultrasonic", "--bus", "cabinet")  # fmt: skip
    assert done == 0, err
    got, _, err = await registry.cli("gateway", "edit", "gw-1", *args)
    assert (got, words in err) == (code, True), err
    config = (await registry.gateway("gw-1"))["config"]["desired"]
    assert config == (3 if code == 0 else 2)  # a refused edit changes nothing


async def test_gateway_list_hides_retired_gateways_unless_all(registry: Registry) -> None:
    for gw in ("gw-live", "gw-old"):
        code, _, err = await registry.cli("gateway", "add", gw, "--district", "310104")
        assert code == 0, err
    code, _, err = await registry.cli("gateway", "retire", "gw-old")
    assert code == 0, err
    _, out, _ = await registry.cli("gateway", "list")
    assert "gw-live" in out and "gw-old" not in out, out
    _, out, _ = await registry.cli("gateway", "list", "--all")
    [old] = [line for line in out.splitlines() if line.startswith("gw-old")]
    assert "retired" in old and "gw-live" in out, out
    _, out, _ = await registry.cli("gateway", "list", "--json")
    assert [g["id"] for g in json.loads(out)] == ["gw-live"]


async def test_what_a_newcomer_missed_is_said(registry: Registry, tmp_path: Path) -> None:
    """No live gateway says so; the name `--name` set shows; a refused CSV says how many rows."""
    code, out, _ = await registry.cli("gateway", "list")
    assert (code, out) == (0, "no live gateways (--all shows retired ones too)\n")
    code, _, err = await registry.cli("gateway", "add", "gw-1", "--bus", "type=mqtt,id=local")
    assert (
        code == 0
        and "note: mqtt bus 'local' reads the sensors' field broker at "
        "127.0.0.1:1883, on the gateway itself; give host="
        in err
    ), err
    code, _, err = await registry.cli("gateway", "add", "gw-2", "--bus",
                                      "type=mqtt,id=local,host=10.0.0.9")  # fmt: skip
    assert (code, err) == (0, ""), err
    code, _, err = await registry.cli("gateway", "edit", "gw-1", "--name", "Cabinet 7, 漕溪北路")
    assert code == 0, err
    for argv in (("gateway", "list"), ("gateway", "show", "gw-1")):
        _, out, _ = await registry.cli(*argv)
        assert "'Cabinet 7, 漕溪北路'" in out, (argv, out)
    csv = tmp_path / "devices.csv"
    csv.write_text("gateway,id,profile,bus\ngw-1,sd-1,smoke-detector-mqtt,local\n"
                   "gw-1,sd-2,no-such-profile,local\n", encoding="utf-8")  # fmt: skip
    code, _, err = await registry.cli("device", "import", str(csv))
    assert code == REFUSED and "the CSV file (1 of 2 rows refused; nothing imported)" in err, err


def cfg(desired: int, acked: int, accepted: bool | None, running: int) -> dict[str, Any]:
    return {"desired": desired, "acknowledged": acked, "accepted": accepted, "running": running,
            "errors": []}  # fmt: skip


@pytest.mark.parametrize(
    ("why", "config", "said"),
    [
        ("the box runs what it accepted", cfg(3, 3, True, 3),
         "config v3: the box accepted v3; the box runs v3"),
        ("not there yet", cfg(3, 2, True, 2), "config v3: the box accepted v2; the box runs v2"),
        ("never acknowledged, a copied config of its own running",
         cfg(1, 0, None, 1), "config v1: never acknowledged; the box runs v1"),
        ("never acknowledged, no Birth with a version", cfg(1, 0, None, 0),
         "config v1: never acknowledged; the box has not said which version it runs"),
        ("refused: the box runs another", cfg(2, 2, False, 5),
         "config v2: the box REJECTED v2; the box runs v5, newer than this registry's: a config "
         "not from it"),
        ("refused, running the older one", cfg(2, 2, False, 1),
         "config v2: the box REJECTED v2; the box runs v1"),
        ("accepted but its Birth names another", cfg(2, 2, True, 1),
         "config v2: the box accepted v2; the box runs v1"),
    ],
)  # fmt: skip
def test_gateway_show_says_only_what_the_registry_knows_of_the_config(
    why: str, config: dict[str, Any], said: str
) -> None:
    """It once said "acknowledged v1" for a box that had never acknowledged anything and ran a
    config copied onto it: the version the box's Birth names is shown beside the ack."""
    assert config_said(config) == said, why


async def test_device_add_attaches_a_component_and_its_departments(registry: Registry) -> None:
    """The CLI takes what the CSV takes: the component id and CODE:NAME departments (a Chinese
    keyboard's full-width colon too)."""
    code, _, err = await registry.cli("gateway", "add", "gw-1",
                                      "--bus", "type=modbus_tcp,id=cabinet,host=10.0.0.5")  # fmt: skip
    assert code == 0, err
    code, _, err = await registry.cli(
        "device", "add", "gw-1", "wl-1", "--profile", "water-level-ultrasonic", "--bus", "cabinet",
        "--component-id", "3101040101000123", "--dept-competent", "310104SW01:徐汇区水务局",
        "--dept-owner", "310104SW02：徐汇区排水所", "--dept-maintainer", "310104YH07",
    )  # fmt: skip
    assert code == 0, err
    code, out, err = await registry.cli("device", "show", "gw-1:wl-1", "--json")
    assert code == 0, err
    dev = json.loads(out)
    assert dev["component_id"] == "3101040101000123", dev
    assert (dev["dept_competent"], dev["dept_owner"], dev["dept_maintainer"]) == (
        {"code": "310104SW01", "name": "徐汇区水务局"},
        {"code": "310104SW02", "name": "徐汇区排水所"},
        {"code": "310104YH07", "name": ""},
    )
    # a wrong id is refused with the registry's reason, and nothing is registered
    code, _, err = await registry.cli(
        "device", "add", "gw-1", "wl-2", "--profile", "water-level-ultrasonic", "--bus", "cabinet",
        "--unit-id", "2", "--component-id", "31010401",
    )  # fmt: skip
    assert code == REFUSED and "16 digits" in err, err
