"""Modbus RTU on the wire: frame sizes, the CRC, and how long a frame holds the line.

Pure: no I/O, no clock. The serial simulator uses it to delay each answer by the time the
frames would take on a real RS-485 line (a pseudo-terminal moves them instantly), and the RTU
benchmark and tests use it to know what a baud rate physically allows.

One transaction on the line, from the first bit of the request to the moment the master may
send again::

    request frame | 3.5-char gap | (device turnaround) | response frame | 3.5-char gap

A frame of n bytes takes ``n * bits_per_char / baudrate`` seconds, with start, data, parity
and stop bits counted (8N1: 10 bits, 8E1 or 8N2: 11). Above 19200 baud the gap is a fixed
1.75 ms (Modbus over serial line, 2.5.1.1).
"""

from __future__ import annotations

from dataclasses import dataclass

from drivers.transport import char_time_s, frame_gap_s

READ_BITS = frozenset({1, 2})
READ_WORDS = frozenset({3, 4})
WRITE_SINGLE = frozenset({5, 6})
WRITE_MULTIPLE = frozenset({15, 16})
EXCEPTION_BYTES = 5  # unit, fc | 0x80, exception code, CRC


@dataclass(frozen=True, slots=True)
class LineTiming:
    """A serial line's character time and frame gap; ``turnaround_s`` is the device's
    think time between the end of a request and the start of its answer."""

    baudrate: int
    bytesize: int = 8
    parity: str = "N"
    stopbits: int = 1
    turnaround_s: float = 0.0

    @property
    def char_s(self) -> float:
        return char_time_s(self.baudrate, self.bytesize, self.parity, self.stopbits)

    @property
    def gap_s(self) -> float:
        return frame_gap_s(self.baudrate, self.bytesize, self.parity, self.stopbits)

    def frame_s(self, nbytes: int) -> float:
        return nbytes * self.char_s

    def answer_s(self, request_bytes: int, response_bytes: int) -> float:
        """From the request's first byte to the response's last byte."""
        return (
            self.frame_s(request_bytes) + self.gap_s + self.turnaround_s
            + self.frame_s(response_bytes)
        )  # fmt: skip

    def exchange_s(self, request_bytes: int, response_bytes: int) -> float:
        """Line time of one whole transaction, including the silence before the next."""
        return self.answer_s(request_bytes, response_bytes) + self.gap_s


def request_bytes(fc: int, count: int) -> int:
    """Size of an RTU request frame (unit id and CRC included)."""
    if fc in READ_BITS or fc in READ_WORDS or fc in WRITE_SINGLE:
        return 8  # unit, fc, address, count or value, CRC
    if fc == 15:
        return 9 + (count + 7) // 8  # ... + byte count + packed bits
    if fc == 16:
        return 9 + 2 * count
    raise ValueError(f"no frame size for function code {fc}")


def response_bytes(fc: int, count: int) -> int:
    """Size of the normal RTU response to a request for ``count`` items."""
    if fc in READ_BITS:
        return 5 + (count + 7) // 8  # unit, fc, byte count, packed bits, CRC
    if fc in READ_WORDS:
        return 5 + 2 * count
    if fc in WRITE_SINGLE or fc in WRITE_MULTIPLE:
        return 8  # echo of address and value (or count)
    raise ValueError(f"no frame size for function code {fc}")


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> bytes:
    """The Modbus CRC (polynomial 0xA001, initial 0xFFFF), low byte first as sent."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return bytes((crc & 0xFF, crc >> 8))


def request_length(buffer: bytes) -> int | None:
    """Length of the request frame at the start of ``buffer``; None while more bytes are
    needed to know it, 0 when the function code has no fixed layout."""
    if len(buffer) < 2:
        return None
    fc = buffer[1]
    if fc in READ_BITS or fc in READ_WORDS or fc in WRITE_SINGLE:
        return 8
    if fc in WRITE_MULTIPLE:
        return 9 + buffer[6] if len(buffer) >= 7 else None
    return 0
