"""Register codec: tables of (words, data type, byte order, word order, expected)."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest

from drivers.codec import (
    BlockDecoder,
    CodecError,
    compile_point,
    decode,
    decode_raw,
    encode,
)
from gridwatch.ground.contract import Quality
from gridwatch.ground.profiles import ModbusPoint


def pt(data_type: str = "uint16", **kw: Any) -> ModbusPoint:
    kw.setdefault("table", "holding")
    return ModbusPoint(address=0, data_type=data_type, **kw)


# float32 123.456 = 0x42F6E979 (the example in most converter manuals);
# float64 123.456 = 0x405EDD2F1A9FBE77; int32 -123456 = 0xFFFE1DC0;
# uint64 0x0123456789ABCDEF = 81985529216486895.
F64 = 123.456
U64 = 0x0123456789ABCDEF
DECODE_TABLE: list[tuple[list[int], str, str, str, object]] = [
    # 16-bit: word order is irrelevant, byte order swaps the register
    ([0x0000], "uint16", "big", "big", 0),
    ([0xFFFE], "uint16", "big", "big", 65534),
    ([0xFEFF], "uint16", "little", "big", 65534),
    ([0xFFFE], "int16", "big", "big", -2),
    ([0x8000], "int16", "big", "big", -32768),
    ([0x0080], "int16", "little", "little", -32768),
    ([0x04D2], "int16", "big", "little", 1234),
    # 32-bit integers, all four layouts
    ([0x1234, 0x5678], "uint32", "big", "big", 0x12345678),
    ([0x5678, 0x1234], "uint32", "big", "little", 0x12345678),
    ([0x3412, 0x7856], "uint32", "little", "big", 0x12345678),
    ([0x7856, 0x3412], "uint32", "little", "little", 0x12345678),
    ([0xFFFE, 0x1DC0], "int32", "big", "big", -123456),
    ([0x1DC0, 0xFFFE], "int32", "big", "little", -123456),
    ([0xFEFF, 0xC01D], "int32", "little", "big", -123456),
    ([0xC01D, 0xFEFF], "int32", "little", "little", -123456),
    # float32 123.456: ABCD, CDAB, BADC, DCBA
    ([0x42F6, 0xE979], "float32", "big", "big", 123.456),
    ([0xE979, 0x42F6], "float32", "big", "little", 123.456),
    ([0xF642, 0x79E9], "float32", "little", "big", 123.456),
    ([0x79E9, 0xF642], "float32", "little", "little", 123.456),
    ([0xC2F6, 0xE979], "float32", "big", "big", -123.456),
    ([0x0000, 0x0000], "float32", "big", "big", 0.0),
    # 64-bit: ABCDEFGH, GHEFCDAB, BADCFEHG, HGFEDCBA
    ([0x0123, 0x4567, 0x89AB, 0xCDEF], "uint64", "big", "big", U64),
    ([0xCDEF, 0x89AB, 0x4567, 0x0123], "uint64", "big", "little", U64),
    ([0x2301, 0x6745, 0xAB89, 0xEFCD], "uint64", "little", "big", U64),
    ([0xEFCD, 0xAB89, 0x6745, 0x2301], "uint64", "little", "little", U64),
    ([0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE], "int64", "big", "big", -2),
    ([0xFFFE, 0xFFFF, 0xFFFF, 0xFFFF], "int64", "big", "little", -2),
    ([0xFFFF, 0xFFFF, 0xFFFF, 0xFEFF], "int64", "little", "big", -2),
    ([0xFEFF, 0xFFFF, 0xFFFF, 0xFFFF], "int64", "little", "little", -2),
    ([0x405E, 0xDD2F, 0x1A9F, 0xBE77], "float64", "big", "big", F64),
    ([0xBE77, 0x1A9F, 0xDD2F, 0x405E], "float64", "big", "little", F64),
    ([0x5E40, 0x2FDD, 0x9F1A, 0x77BE], "float64", "little", "big", F64),
    ([0x77BE, 0x9F1A, 0x2FDD, 0x5E40], "float64", "little", "little", F64),
    # booleans: a whole register as a flag
    ([0x0000], "bool", "big", "big", False),
    ([0x0100], "bool", "big", "big", True),
]


@pytest.mark.parametrize(("words", "dtype", "byte_order", "word_order", "expected"), DECODE_TABLE)
def test_decode_table(
    words: list[int], dtype: str, byte_order: str, word_order: str, expected: object
) -> None:
    point = pt(dtype, byte_order=byte_order, word_order=word_order)
    value, quality = decode(words, point)
    assert quality is Quality.GOOD
    if isinstance(expected, float):
        assert value == pytest.approx(expected, rel=1e-6)
    else:
        assert value == expected
        assert type(value) is type(expected)


@pytest.mark.parametrize(("words", "dtype", "byte_order", "word_order", "expected"), DECODE_TABLE)
def test_encode_is_the_inverse(
    words: list[int], dtype: str, byte_order: str, word_order: str, expected: object
) -> None:
    if dtype == "bool":
        pytest.skip("bool encodes to 0/1, not the device's other truthy values")
    point = pt(dtype, byte_order=byte_order, word_order=word_order)
    assert encode(expected, point) == words  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("register", "bit", "expected"),
    [(0b0000, 0, False), (0b0001, 0, True), (0b0010, 1, True), (0b0010, 0, False),
     (0x8000, 15, True), (0x7FFF, 15, False)],
)  # fmt: skip
def test_bit_in_register(register: int, bit: int, expected: bool) -> None:
    assert decode([register], pt("bit", bit=bit)) == (expected, Quality.GOOD)


def test_bit_encode_keeps_the_other_bits() -> None:
    point = pt("bit", bit=1)
    assert encode(True, point, current=0b1001) == [0b1011]
    assert encode(False, point, current=0b1011) == [0b1001]


@pytest.mark.parametrize("table", ["coil", "discrete"])
def test_bit_tables(table: str) -> None:
    point = pt("bool", table=table)
    assert decode([True], point) == (True, Quality.GOOD)
    assert decode([False], point) == (False, Quality.GOOD)
    assert encode(True, point) == [1]


@pytest.mark.parametrize(
    ("words", "byte_order", "expected"),
    [
        ([0x4757, 0x2D30, 0x3100, 0x0000], "big", "GW-01"),  # NUL padded
        ([0x5747, 0x302D, 0x0031, 0x0000], "little", "GW-01"),
        ([0x4142, 0x4320, 0x2020], "big", "ABC"),  # space padded
    ],
)
def test_string(words: list[int], byte_order: str, expected: str) -> None:
    point = pt("string", length=len(words), byte_order=byte_order)
    assert decode(words, point) == (expected, Quality.GOOD)
    assert decode(encode(expected, point), point) == (expected, Quality.GOOD)


# (words, point options, expected value, expected quality)
QUALITY_TABLE: list[tuple[list[int], dict[str, Any], object, Quality]] = [
    # the ultrasonic converter: 0..10000 = 0..10 m, 65535 = loop open
    ([1234], {"scale": 0.001, "range": {"min": 0, "max": 10}, "sentinels": [65535]}, 1.234,
     Quality.GOOD),
    ([65535], {"scale": 0.001, "range": {"min": 0, "max": 10}, "sentinels": [65535]}, None,
     Quality.INVALID),
    ([10001], {"scale": 0.001, "range": {"min": 0, "max": 10}}, None, Quality.OUT_OF_RANGE),
    ([10000], {"scale": 0.001, "range": {"min": 0, "max": 10}}, 10.0, Quality.GOOD),
    ([0xFFFF], {"data_type": "int16", "range": {"min": 0}}, None, Quality.OUT_OF_RANGE),
    ([0x8000], {"data_type": "int16", "sentinels": [-32768]}, None, Quality.INVALID),
    # 4-20 mA mapped to 0..20000 uA, offset applied after scale
    ([4000], {"scale": 0.001, "offset": -4.0}, 0.0, Quality.GOOD),
    ([200], {"scale": 0.5, "offset": 1.0}, 101.0, Quality.GOOD),
    # floats: NaN and infinity never pass as a reading
    ([0x7FC0, 0x0000], {"data_type": "float32"}, None, Quality.INVALID),
    ([0x7F80, 0x0000], {"data_type": "float32"}, None, Quality.INVALID),
    ([0xFF80, 0x0000], {"data_type": "float32"}, None, Quality.INVALID),
    ([0x7FF8, 0, 0, 0], {"data_type": "float64"}, None, Quality.INVALID),
    ([0x42F6, 0xE979], {"data_type": "float32", "range": {"max": 100}}, None,
     Quality.OUT_OF_RANGE),
    ([0xC61C, 0x3C00], {"data_type": "float32", "sentinels": [-9999]}, None, Quality.INVALID),
]  # fmt: skip


@pytest.mark.parametrize(("words", "options", "expected", "quality"), QUALITY_TABLE)
def test_quality(
    words: list[int], options: dict[str, Any], expected: object, quality: Quality
) -> None:
    value, got = decode(words, pt(**options))
    assert got is quality
    if expected is None:
        assert value is None
    else:
        assert value == pytest.approx(expected)


def test_one_block_decodes_every_layout_side_by_side() -> None:
    """The poller's block decoder: every table row in one response, with gaps, overlaps and
    flags between them, decodes as each row does alone."""
    words: list[int] = []
    slices = []
    expected = {}
    rows = [*DECODE_TABLE, ([0x0007], "bit", "big", "big", True)]
    for i, (row_words, dtype, byte_order, word_order, value) in enumerate(rows):
        opts: dict[str, Any] = {"byte_order": byte_order, "word_order": word_order}
        if dtype == "bit":
            opts["bit"] = 2
        point = ModbusPoint(address=len(words), data_type=dtype, table="holding", **opts)
        slices.append((f"p{i}", len(words), compile_point(point)))
        expected[f"p{i}"] = decode(row_words, point)
        if dtype == "uint32":  # a second point on the same registers, read as two uint16
            half = ModbusPoint(address=len(words) + 1, data_type="uint16", table="holding",
                               byte_order=byte_order)  # fmt: skip
            slices.append((f"p{i}-low", len(words) + 1, compile_point(half)))
            expected[f"p{i}-low"] = decode(row_words[1:], half)
        words += [*row_words, 0xABCD]  # an unused register between points
        assert decode(row_words, point)[0] == value or dtype.startswith("float")
    out: dict[str, Any] = {}
    BlockDecoder(len(words), slices).decode_into(words, out)
    assert out == expected


def test_a_short_answer_decodes_what_it_holds_point_by_point() -> None:
    dec = compile_point(pt("uint16"))
    block = BlockDecoder(3, [("a", 0, dec), ("c", 2, dec)])
    out: dict[str, Any] = {}
    with pytest.raises(struct.error):  # the poll fails loudly, as a short read always did
        block.decode_into([5, 6], out)
    assert out == {"a": (5, Quality.GOOD)}


def test_decoder_reads_at_an_offset_in_a_block() -> None:
    block = [0xAAAA, 0x42F6, 0xE979, 0xBBBB]
    dec = compile_point(pt("float32"))
    assert dec.decode(block, 1)[0] == pytest.approx(123.456, rel=1e-6)


def test_scaled_encode_round_trips() -> None:
    point = pt("uint16", scale=0.001, offset=0.0)
    assert encode(2.5, point) == [2500]
    assert decode(encode(2.5, point), point)[0] == pytest.approx(2.5)


def test_encode_raw_plants_a_sentinel() -> None:
    point = pt("uint16", scale=0.001, sentinels=[65535])
    assert compile_point(point).encode_raw(65535) == [65535]


def test_encode_rejects_values_that_do_not_fit() -> None:
    with pytest.raises(CodecError):
        encode(70000, pt("uint16"))
    with pytest.raises(CodecError):
        encode(-1, pt("uint32"))


def test_decode_raw_shows_every_layout() -> None:
    words = [0x42F6, 0xE979]
    assert decode_raw(words, "float32", "big", "big") == pytest.approx(123.456, rel=1e-6)
    assert not math.isclose(decode_raw(words, "float32", "big", "little"), 123.456)


# (raw words, point options, the exact value): scaling must not leave binary float noise
# (5895 * 0.001 is 5.8950000000000005 in floating point) nor cut a real digit.
ROUNDING_TABLE: list[tuple[list[int], dict[str, Any], object]] = [
    ([5895], {"scale": 0.001}, 5.895),
    ([5901], {"scale": 0.001}, 5.901),
    ([3], {"scale": 0.1}, 0.3),  # 0.30000000000000004
    ([0xFFFD], {"data_type": "int16", "scale": 0.1}, -0.3),
    ([7], {"scale": 0.01}, 0.07),
    ([12345], {"scale": 0.0001}, 1.2345),
    ([1], {"scale": 1e-05}, 0.00001),
    ([4001], {"scale": 0.001, "offset": -4.0}, 0.001),  # 0.0009999999999998899
    ([3], {"scale": 0.1, "offset": 0.2}, 0.5),  # 0.5000000000000001
    ([123], {"scale": 2.5, "offset": 0.25}, 307.75),
    ([65535], {"scale": 0.001}, 65.535),
    ([0xFFFF, 0xFFFF], {"data_type": "uint32", "scale": 0.001}, 4294967.295),
    ([0x0123, 0x4567, 0x89AB, 0xCDEF], {"data_type": "uint64", "scale": 0.001},
     81985529216486.895),
    ([1234], {}, 1234),  # unscaled integers stay integers
    ([1234], {"scale": 1 / 3}, 411.3333333333333),  # a scale with no short decimal: as is
    # float32: the shortest decimal that is the same float32, then scaled without noise
    ([0x42F6, 0xE979], {"data_type": "float32"}, 123.456),  # not 123.45600128173828
    ([0x3F4C, 0xCCCD], {"data_type": "float32"}, 0.8),  # not 0.800000011920929
    ([0x3DCC, 0xCCCD], {"data_type": "float32"}, 0.1),
    ([0x3F9D, 0xF3B6], {"data_type": "float32"}, 1.234),
    ([0x3F80, 0x0001], {"data_type": "float32"}, 1.0000001),  # the next float32 after 1
    ([0x42F6, 0xE979], {"data_type": "float32", "scale": 0.1}, 12.3456),
    ([0x42F6, 0xE979], {"data_type": "float32", "scale": 0.001, "offset": 1}, 1.123456),
    # float64 already prints as its shortest decimal; only the scale's noise goes
    ([0x3FB9, 0x9999, 0x9999, 0x999A], {"data_type": "float64", "scale": 3}, 0.3),
]  # fmt: skip


@pytest.mark.parametrize(("words", "options", "expected"), ROUNDING_TABLE)
def test_scaled_values_carry_no_float_noise(
    words: list[int], options: dict[str, Any], expected: object
) -> None:
    value, quality = decode(words, pt(**options))
    assert quality is Quality.GOOD
    assert value == expected and type(value) is type(expected)
    assert repr(value) == repr(expected)


def test_float32_shortest_decimal_is_the_same_float32() -> None:
    point = pt("float32")
    for value in (0.1, 1e-7, 3.4028235e38, -2.5e-38, 16777217.0, 0.333333333):
        decoded, _ = decode(encode(value, point), point)
        assert encode(decoded, point) == encode(value, point)  # type: ignore[arg-type]
        assert len(repr(decoded)) <= len(repr(value)) + 1
