"""The commissioning check (pure): values that look like a byte-order mistake are flagged with
what they would read under the other layouts; sane values pass."""

from __future__ import annotations

import struct

import pytest

from drivers.codec import decode
from gridwatch.ground.profiles import ModbusPoint, ValueRange
from gridwatch.top.installer import byte_order_alternatives, check_reading

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
