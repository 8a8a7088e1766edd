"""Register codec: raw Modbus words <-> engineering values, with a quality verdict.

Pure and table driven. A ``PointDecoder`` is compiled once per point (struct objects, scale,
range, sentinels resolved up front) because decoding runs tens of thousands of times a second.

Byte and word order: a register travels as two bytes, high byte first. ``byte_order="little"``
means the device stores each register's two bytes swapped; ``word_order="little"`` means the
least significant register comes first. For float32 123.456 (bytes 42 F6 E9 79) the four
combinations put these words on the wire::

    byte big,    word big    (ABCD)  0x42F6 0xE979
    byte big,    word little (CDAB)  0xE979 0x42F6
    byte little, word big    (BADC)  0xF642 0x79E9
    byte little, word little (DCBA)  0x79E9 0xF642

Both orders reduce to one ``struct`` pack of the words and one unpack of the bytes: words are
packed big-endian when the two orders agree (else little-endian, which swaps each register's
bytes), and the bytes are unpacked in the word order. No list reversal on the hot path.

Values come out without binary float noise: a scaled integer is rounded to the decimals its
scale and offset imply (plus a margin), so 5895 x 0.001 reads 5.895, not 5.8950000000000005,
and a float32 reads as the shortest decimal that is the same float32 (123.456, not
123.45600128173828).
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal

from gridwatch.ground.contract import Quality, Value
from gridwatch.ground.profiles import ModbusPoint

# data type -> (struct code, registers); 'bit', 'bool' and 'string' are handled apart.
TYPES: dict[str, tuple[str, int]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float32": ("f", 2),
    "float64": ("d", 4),
}
FLOAT_TYPES = frozenset({"float32", "float64"})
BIT_TABLES = frozenset({"coil", "discrete"})

Decoded = tuple[Value, Quality]


class CodecError(ValueError):
    """A value cannot be encoded for a point (wrong type, out of the raw type's range)."""


def _endians(byte_order: str, word_order: str) -> tuple[str, str]:
    """(pack endian for the words, unpack endian for the bytes); see the module docstring."""
    pack = ">" if byte_order == word_order else "<"
    unpack = ">" if word_order == "big" else "<"
    return pack, unpack


EXTRA_DIGITS = 3  # kept beyond the decimals a scale implies, so rounding never cuts a real digit
_F32 = struct.Struct("<f")


def decimals(x: float) -> int:
    """Decimal places of a number as written: 0.001 -> 3, 2.5 -> 1, 100.0 -> 0, 1e-05 -> 5."""
    exponent = Decimal(repr(x)).normalize().as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0  # NaN, infinity: 0


@functools.lru_cache(maxsize=4096)  # field values repeat from poll to poll; bounded memory
def shortest_float32(x: float) -> float:
    """The shortest decimal that is the same float32: 123.45600128173828 -> 123.456."""
    want = _F32.pack(x)
    for digits in (6, 7, 8):
        y = float(f"{x:.{digits}g}")
        if _F32.pack(y) == want:
            return y
    return float(f"{x:.9g}")  # nine significant digits always round-trip a float32


def scaled_value(raw: float, scale: float, offset: float, places: int) -> float:
    """``raw * scale + offset`` rounded to ``places`` decimals (plus the raw value's own when
    it is a float): 5895 * 0.001 is 5.895, not 5.8950000000000005."""
    if isinstance(raw, float):
        places += decimals(raw)
    return round(raw * scale + offset, places)


@functools.cache
def scale_places(scale: float, offset: float) -> int:
    """Decimals that scale and offset can add to an integer raw value, plus a margin."""
    return max(decimals(scale), decimals(offset)) + EXTRA_DIGITS


@dataclass(frozen=True, slots=True)
class _Judge:
    """Scale, sentinel and range handling shared by every numeric decoder."""

    scale: float
    offset: float
    lo: float
    hi: float
    sentinels: frozenset[float]
    scaled: bool  # False keeps integers integers (scale 1, offset 0)
    places: int  # see scale_places
    float32: bool  # show the shortest decimal of the float32, not its binary expansion

    def judge(self, raw: int | float) -> Decoded:
        if raw in self.sentinels:
            return None, Quality.INVALID
        if self.float32:
            raw = shortest_float32(raw)
        value = scaled_value(raw, self.scale, self.offset, self.places) if self.scaled else raw
        if value != value or value in (math.inf, -math.inf):  # NaN never equals itself
            return None, Quality.INVALID
        if value < self.lo or value > self.hi:
            return None, Quality.OUT_OF_RANGE
        return value, Quality.GOOD

    def fastest(self, is_float: bool) -> Callable[[int | float], Decoded]:
        """:meth:`judge`, or a shorter equivalent when the point needs fewer checks: an
        unscaled integer can be neither NaN nor infinite, and most have no sentinel."""
        if is_float or self.scaled or self.float32:
            return self.judge
        good = Quality.GOOD
        lo, hi, sentinels = self.lo, self.hi, self.sentinels
        if not sentinels and lo == -math.inf and hi == math.inf:
            return lambda raw: (raw, good)

        def judge_int(raw: int | float) -> Decoded:
            if raw in sentinels:
                return None, Quality.INVALID
            if raw < lo or raw > hi:
                return None, Quality.OUT_OF_RANGE
            return raw, good

        return judge_int


class PointDecoder:
    """Decode (and encode) one point; build once with :func:`compile_point`, call per poll."""

    __slots__ = ("_judge", "_pack", "_unpack", "count", "kind", "point")

    def __init__(self, point: ModbusPoint) -> None:
        self.point = point
        self.count = point.count
        self.kind = _kind(point)
        lo = point.range.min if point.range and point.range.min is not None else -math.inf
        hi = point.range.max if point.range and point.range.max is not None else math.inf
        self._judge = _Judge(
            point.scale, point.offset, lo, hi, frozenset(point.sentinels),
            scaled=point.scale != 1.0 or point.offset != 0.0,
            places=scale_places(point.scale, point.offset),
            float32=point.data_type == "float32",
        )  # fmt: skip
        pack_e, unpack_e = _endians(point.byte_order, point.word_order)
        if self.kind == "string":  # characters run in register order; only bytes may swap
            pack_e = ">" if point.byte_order == "big" else "<"
        n = point.count
        code = TYPES[point.data_type][0] if point.data_type in TYPES else "s"
        self._pack = struct.Struct(f"{pack_e}{n}H")
        self._unpack = struct.Struct(f"{unpack_e}{code}" if code != "s" else f"{2 * n}s")

    def decode(self, words: Sequence[int] | Sequence[bool], at: int = 0) -> Decoded:
        """Value and quality of the point whose first word is ``words[at]``."""
        kind = self.kind
        if kind == "num":
            raw = self._unpack.unpack(self._pack.pack(*words[at : at + self.count]))[0]
            return self._judge.judge(raw)
        if kind == "bitreg":
            bit = self.point.bit or 0
            return bool((words[at] >> bit) & 1), Quality.GOOD
        if kind == "flag":  # coil, discrete input, or a whole register as a boolean
            return bool(words[at]), Quality.GOOD
        return self._decode_string(words[at : at + self.count])

    def _decode_string(self, words: Sequence[int] | Sequence[bool]) -> Decoded:
        raw: bytes = self._unpack.unpack(self._pack.pack(*words))[0]
        text = raw.split(b"\x00", 1)[0].decode("latin-1").rstrip(" ")
        return text, Quality.GOOD

    def encode(self, value: float | int | bool | str, current: int = 0) -> list[int]:
        """Words that decode to ``value``; ``current`` is the register a 'bit' point lives in."""
        kind = self.kind
        if kind == "bitreg":
            mask = 1 << (self.point.bit or 0)
            return [(current | mask) if value else (current & ~mask & 0xFFFF)]
        if kind == "flag":
            return [1 if value else 0]
        if kind == "string":
            return self._encode_string(str(value))
        if isinstance(value, str):
            raise CodecError(f"cannot encode {value!r} as {self.point.data_type}")
        if not self._judge.scaled:  # keeps 64-bit integers exact (no float round trip)
            return self.encode_raw(value)
        return self.encode_raw((value - self.point.offset) / self.point.scale)

    def encode_raw(self, raw: float | int) -> list[int]:
        """Words holding ``raw`` before scaling (how tests plant a sentinel)."""
        if self.kind != "num":
            return self.encode(bool(raw) if self.kind != "string" else str(raw))
        if self.point.data_type not in FLOAT_TYPES:
            raw = round(raw)
        try:
            packed = self._unpack.pack(raw)
        except struct.error as exc:
            raise CodecError(f"{raw!r} does not fit {self.point.data_type}") from exc
        return list(self._pack.unpack(packed))

    def _encode_string(self, text: str) -> list[int]:
        data = text.encode("latin-1", errors="replace")[: 2 * self.count]
        return list(self._pack.unpack(self._unpack.pack(data)))


class BlockDecoder:
    """Every point of one read response, decoded at once; build once per request.

    The response's words are packed once per byte-order variant, and all numeric points that
    share (pack, unpack) endianness come out of one precompiled ``struct`` with pad bytes
    between them: one C call per poll instead of two per point. Points whose registers overlap
    go to a further struct; bits, flags and strings use their :class:`PointDecoder`.
    """

    __slots__ = ("_all", "_count", "_groups", "_others", "_packers")

    def __init__(self, count: int, slices: Sequence[tuple[str, int, PointDecoder]]) -> None:
        self._count = count
        self._all = list(slices)
        by_order: dict[tuple[str, str], list[tuple[int, str, PointDecoder]]] = {}
        self._others: list[tuple[str, int, PointDecoder]] = []
        for name, offset, dec in slices:
            if dec.kind == "num" and offset + dec.count <= count:
                p = dec.point
                order = _endians(p.byte_order, p.word_order)
                by_order.setdefault(order, []).append((offset, name, dec))
            else:
                self._others.append((name, offset, dec))
        self._packers = {pack: struct.Struct(f"{pack}{count}H") for pack, _ in by_order}
        self._groups: list[tuple[str, struct.Struct, tuple[str, ...], tuple[Judge, ...]]] = []
        for (pack, unpack), members in by_order.items():
            for run in _disjoint_runs(sorted(members, key=lambda m: m[0])):
                fmt, at = [unpack], 0
                for offset, _, dec in run:
                    fmt.append(f"{2 * (offset - at)}x{TYPES[dec.point.data_type][0]}")
                    at = offset + dec.count
                names = tuple(name for _, name, _ in run)
                judges = tuple(
                    dec._judge.fastest(dec.point.data_type in FLOAT_TYPES) for _, _, dec in run
                )
                self._groups.append((pack, struct.Struct("".join(fmt)), names, judges))

    def decode_into(self, words: Sequence[int] | Sequence[bool], out: dict[str, Decoded]) -> None:
        """Put every point's (value, quality) into ``out`` by name."""
        if len(words) != self._count:  # a short answer: each point on its own, as before
            for name, offset, dec in self._all:
                out[name] = dec.decode(words, offset)
            return
        packed = {pack: s.pack(*words) for pack, s in self._packers.items()}
        for pack, st, names, judges in self._groups:
            for name, judge, raw in zip(names, judges, st.unpack(packed[pack][: st.size]),
                                        strict=True):  # fmt: skip
                out[name] = judge(raw)
        for name, offset, dec in self._others:
            out[name] = dec.decode(words, offset)


def _disjoint_runs(
    members: list[tuple[int, str, PointDecoder]],
) -> list[list[tuple[int, str, PointDecoder]]]:
    """Points sorted by offset, cut into runs in which no two points share a register."""
    runs: list[list[tuple[int, str, PointDecoder]]] = []
    for m in members:
        for run in runs:
            last_offset, _, last = run[-1]
            if m[0] >= last_offset + last.count:
                run.append(m)
                break
        else:
            runs.append([m])
    return runs


Judge = Callable[[int | float], Decoded]


def _kind(point: ModbusPoint) -> str:
    if point.table in BIT_TABLES or point.data_type == "bool":
        return "flag"
    if point.data_type == "bit":
        return "bitreg"
    if point.data_type == "string":
        return "string"
    return "num"


def compile_point(point: ModbusPoint) -> PointDecoder:
    return PointDecoder(point)


def decode(words: Sequence[int] | Sequence[bool], point: ModbusPoint) -> Decoded:
    """One-off decode (through a one-point :class:`BlockDecoder`, the hot path's decoder)."""
    out: dict[str, Decoded] = {}
    BlockDecoder(len(words), [("", 0, PointDecoder(point))]).decode_into(words, out)
    return out[""]


def encode(value: float | int | bool | str, point: ModbusPoint, current: int = 0) -> list[int]:
    """Inverse of :func:`decode`: the words a device would hold for ``value``."""
    return PointDecoder(point).encode(value, current)


ORDERS: tuple[tuple[str, str, str], ...] = (
    ("ABCD", "big", "big"),
    ("CDAB", "big", "little"),
    ("BADC", "little", "big"),
    ("DCBA", "little", "little"),
)
"""(label, byte order, word order): every layout a multi-register value may use."""


def decode_raw(words: Sequence[int], data_type: str, byte_order: str, word_order: str) -> float:
    """Unscaled number from words under one layout (the probe shows all of them)."""
    code, n = TYPES[data_type]
    pack_e, unpack_e = _endians(byte_order, word_order)
    value: float = struct.unpack(f"{unpack_e}{code}", struct.pack(f"{pack_e}{n}H", *words[:n]))[0]
    return value
