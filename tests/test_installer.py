"""The commissioning check (pure): values that look like a byte-order mistake are flagged with
what they would read under the other layouts; sane values pass. And `device commission` against
a real registry: a device in alarm is shown with its alerts, never as simply good."""

from __future__ import annotations

import argparse
import struct
from pathlib import Path

import pytest

from device_registry import Changes
from device_registry.http.auth import Role
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
from gridwatch.top.installer import Api, byte_order_alternatives, check_reading, commission
from tests._ops_helpers import now_ms, registry

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
                category="FLOOD-WATERLOG-01",
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
    async with registry(tmp_path) as reg:
        await reg.store.apply(ch)
        args = argparse.Namespace(url=reg.url, token=reg.tokens[Role.INSTALLER], ca_file=None)
        async with Api(args) as api:
            code = await commission(api, "gw1:wl-001", timeout=5)
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0, out
    assert out[-1] == last_line, name
    alarm_lines = [line for line in out if "IN ALARM" in line]
    expected = ["  IN ALARM: major FLOOD-WATERLOG-01 on level: Water level above warning line: "
                "2 m"] if alarm else []  # fmt: skip
    assert alarm_lines == expected, out
