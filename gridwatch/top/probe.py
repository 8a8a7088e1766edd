"""``gridwatch probe modbus``: read live registers and show them under every decoding.

Commissioning's classic mistake is a swapped float (a level of 123.456 m reads as -1.4e+25):
the table puts every data type under every byte/word order side by side, so the installer
picks the row and column that shows the value the display on the device shows.

Exit codes: 0 read (or found units), 1 nothing answered, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import TextIO

from drivers.codec import ORDERS, TYPES, decode_raw
from drivers.errors import CommunicationError, DeviceRefused, DriverError
from drivers.transport import ModbusTransport, serial_transport, tcp_transport
from gridwatch.ground.gatewayconf import ModbusRtuBus, ModbusTcpBus

OK, NOTHING, USAGE = 0, 1, 2
SCAN_PARALLEL = 8


def transport_for(args: argparse.Namespace, size: int = 1) -> ModbusTransport:
    if args.serial:
        rtu = ModbusRtuBus(type="modbus_rtu", id="probe", port=args.serial,
                           baudrate=args.baudrate, timeout_s=args.timeout)  # fmt: skip
        return serial_transport(rtu)
    tcp = ModbusTcpBus(type="modbus_tcp", id="probe", host=args.host, port=args.port,
                       timeout_s=args.timeout, max_concurrency=size)  # fmt: skip
    return tcp_transport(tcp)


def _fmt(value: float) -> str:
    if isinstance(value, float):
        return f"{value:.7g}"
    return str(value)


def render(words: Sequence[int], address: int) -> list[str]:
    """The table: one row per (start address, data type), one column per order."""
    head = f"{'addr':>6} {'type':<8}" + "".join(f"{label:>22}" for label, _, _ in ORDERS)
    lines = [
        "raw: " + " ".join(f"{address + i}=0x{w:04X}" for i, w in enumerate(words)),
        head,
        "-" * len(head),
    ]
    for offset in range(len(words)):
        for dtype, (_, n) in TYPES.items():
            if offset + n > len(words):
                continue
            chunk = words[offset : offset + n]
            cells = [_fmt(decode_raw(chunk, dtype, bo, wo)) for _, bo, wo in ORDERS]
            lines.append(f"{address + offset:>6} {dtype:<8}" + "".join(f"{c:>22}" for c in cells))
    text = b"".join(w.to_bytes(2, "big") for w in words)
    swapped = b"".join(w.to_bytes(2, "little") for w in words)
    lines.append(f"string (AB): {_printable(text)!r}   string (BA): {_printable(swapped)!r}")
    return lines


def _printable(data: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 else "." for b in data)


async def read(args: argparse.Namespace, out: TextIO) -> int:
    transport = transport_for(args)
    try:
        words = await transport.read(args.table, args.address, args.count, args.unit)
    except DriverError as exc:
        print(f"unit {args.unit}: {exc.reason}", file=sys.stderr)
        return NOTHING
    finally:
        await transport.close()
    print(f"unit {args.unit} {args.table} {args.address}..{args.address + args.count - 1}",
          file=out)  # fmt: skip
    for line in render([int(w) for w in words], args.address):
        print(line, file=out)
    return OK


async def _answers(transport: ModbusTransport, args: argparse.Namespace, unit: int) -> bool:
    try:
        await transport.read(args.table, args.address, 1, unit)
    except CommunicationError:  # includes a gateway saying the unit is silent
        return False
    except DeviceRefused:
        return True  # refusing this address still proves the unit is there
    return True


async def scan(args: argparse.Namespace, out: TextIO) -> int:
    transport = transport_for(args, size=1 if args.serial else SCAN_PARALLEL)
    try:
        units = list(range(1, 248))
        found = await asyncio.gather(*(_answers(transport, args, u) for u in units))
    finally:
        await transport.close()
    answering = [u for u, ok in zip(units, found, strict=True) if ok]
    for unit in answering:
        print(f"unit {unit} answers", file=out)
    if not answering:
        print("no unit answered", file=sys.stderr)
    return OK if answering else NOTHING


def _usage_error(args: argparse.Namespace) -> str:
    if not 1 <= args.count <= 125:
        return "--count must be 1..125"
    if args.address + args.count > 65536:
        return "--address + --count must stay below 65536"
    if not 0 <= args.unit <= 247:
        return "--unit must be 0..247"
    return ""


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    problem = _usage_error(args)
    if problem:
        print(f"gridwatch probe modbus: {problem}", file=sys.stderr)
        return USAGE
    out = out or sys.stdout
    return asyncio.run(scan(args, out) if args.scan else read(args, out))
