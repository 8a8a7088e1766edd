"""``gridwatch probe modbus``: read live registers or bits and show what they mean.

Commissioning's classic mistake is a swapped float (a level of 123.456 m reads as -1.4e+25):
the register table puts every data type under every byte/word order side by side, so the
installer picks the row and column that shows the value the display on the device shows. Coils
and discrete inputs (``--table coil|discrete``) read as on/off. ``--profile`` reads a device as
its profile declares, each point decoded by the edge's own codec (scale, unit, range,
sentinels), one request per point so that a refusal names the point it hit.

A failure says what happened in words, for the installer at the cabinet: a Modbus exception is
named (0x02 "illegal data address": the register does not exist on that unit; 0x0B: the
converter answered, the unit behind it did not), with what to check next.

Exit codes (``--help``, from ``cli.PROBE_EXIT_CODES``, and docs/edge.md say the same; the one
table of every command, ``gridwatch.top.exits``)::

    0  read (or, with --scan, found at least one unit)
    1  nothing answered: cannot connect, no answer in time, a garbled answer, or a TCP
       converter reporting that the unit behind it is silent (exception 0x0A/0x0B)
    2  bad arguments (also argparse's own code), an unknown or broken profile
    4  the unit answered but refused (a Modbus exception: 0x01, 0x02, 0x03, 0x04, 0x06, ...)
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from drivers.codec import ORDERS, TYPES, decode, decode_raw
from drivers.errors import (
    CommunicationError,
    ConnectError,
    DeviceRefused,
    DeviceTimeout,
    DriverError,
    GatewayNoResponse,
)
from drivers.planner import MAX_BITS, MAX_REGISTERS
from drivers.transport import ModbusTransport, serial_transport, tcp_transport
from gridwatch.ground.contract import Value
from gridwatch.ground.gatewayconf import ModbusRtuBus, ModbusTcpBus, default_profiles_dir
from gridwatch.ground.profiles import (
    ModbusPoint,
    ModbusProfile,
    load_profile,
    load_profiles,
    point_decimals,
)
from gridwatch.ground.yamlconf import ConfigError
from gridwatch.top import exits

# the one table of every command (gridwatch.top.exits): a unit that does not answer is the bad
# news the installer probes for; an exception is the unit refusing the request
OK, UNREACHABLE, USAGE, REFUSED = exits.OK, exits.BAD_NEWS, exits.USAGE, exits.REFUSED
SCAN_PARALLEL = 8
BIT_TABLES = ("coil", "discrete")
KIND = {"holding": "holding register", "input": "input register", "coil": "coil",
        "discrete": "discrete input"}  # fmt: skip
FUNCTION = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
MANUAL_BASE = {"holding": 40001, "input": 30001}
"""Manuals often number registers from these (Modicon numbering): 40001 is address 0 here."""


@dataclass(frozen=True)
class Request:
    """One read, and where it went: what an explanation names."""

    endpoint: str
    unit: int
    table: str
    address: int
    count: int
    timeout_s: float
    serial: bool = False

    @property
    def span(self) -> str:
        kind = KIND[self.table]
        if self.count == 1:
            return f"{kind} {self.address}"
        return f"{kind}s {self.address}..{self.address + self.count - 1}"


# Modbus exception code -> (its name in the specification, what happened, what to check).
# Fields: {unit} {span} {kind} {fc} {endpoint} {does}. 0x0A and 0x0B come from a TCP gateway.
EXCEPTIONS: dict[int, tuple[str, str, str]] = {
    0x01: ("illegal function", "unit {unit} does not serve {kind}s (function {fc})",
           "try another --table, as its manual's register map lists them"),
    0x02: ("illegal data address", "{span} {does} not exist on unit {unit}",
           "check the address in the device's register map"),
    0x03: ("illegal data value", "unit {unit} refused reading {span}",
           "the count may be more than it serves in one request; try a smaller --count"),
    0x04: ("server device failure", "unit {unit} failed while reading {span}",
           "the device reports an internal fault"),
    0x05: ("acknowledge", "unit {unit} accepted the request but needs longer", "try again"),
    0x06: ("server device busy", "unit {unit} is busy", "try again in a moment"),
    0x08: ("memory parity error", "unit {unit} reports a memory parity error",
           "the device needs service"),
    0x0A: ("gateway path unavailable",
           "the converter at {endpoint} answered but has no path to unit {unit}",
           "check its routing or serial-port settings"),
    0x0B: ("gateway target device failed to respond",
           "the converter at {endpoint} answered but unit {unit} behind it did not",
           "check the unit id, the RS-485 wiring and the converter's baud rate and parity"),
}  # fmt: skip
_UNKNOWN = ("unknown exception", "unit {unit} refused {span}", "")


def exception_text(code: int, req: Request) -> str:
    """A Modbus exception in words, naming the unit and registers of ``req``."""
    name, fact, advice = EXCEPTIONS.get(code, _UNKNOWN)
    fact = fact.format(unit=req.unit, span=req.span, kind=KIND[req.table],
                       fc=FUNCTION[req.table], endpoint=req.endpoint,
                       does="does" if req.count == 1 else "do")  # fmt: skip
    text = f"{fact[0].upper()}{fact[1:]} (Modbus exception {code:#04x}: {name})"
    if advice:
        text += f": {advice}"
    base = MANUAL_BASE.get(req.table)
    if code == 0x02 and base is not None and base <= req.address < base + 10000:
        text += (f"; manuals often number {KIND[req.table]}s from {base}, which is address 0 "
                 f"here: {req.address} would be --address {req.address - base}")  # fmt: skip
    return text


def explain(exc: DriverError, req: Request) -> str:
    """What went wrong with ``req``, in words, from the error's type and code (never its text)."""
    if isinstance(exc, DeviceRefused | GatewayNoResponse):
        return exception_text(exc.code, req)
    if isinstance(exc, ConnectError):
        check = "the serial device" if req.serial else "the address, the port and the network"
        return f"Cannot connect to {req.endpoint}: check {check}"
    if isinstance(exc, DeviceTimeout):
        check = "unit id, wiring, baud rate and parity" if req.serial else (
            "unit id, and that nothing else holds the device's only connection")  # fmt: skip
        return (f"No answer from unit {req.unit} at {req.endpoint} within {req.timeout_s:g} s: "
                f"check the {check}")  # fmt: skip
    return f"Unit {req.unit} at {req.endpoint}: {exc.reason}"


def exit_code(exc: DriverError) -> int:
    return UNREACHABLE if isinstance(exc, CommunicationError) else REFUSED


def transport_for(args: argparse.Namespace, size: int = 1) -> ModbusTransport:
    if args.serial:
        rtu = ModbusRtuBus(type="modbus_rtu", id="probe", port=args.serial,
                           baudrate=args.baudrate, timeout_s=args.timeout)  # fmt: skip
        return serial_transport(rtu)
    tcp = ModbusTcpBus(type="modbus_tcp", id="probe", host=args.host, port=args.port,
                       timeout_s=args.timeout, max_concurrency=size)  # fmt: skip
    return tcp_transport(tcp)


def request_of(args: argparse.Namespace, table: str, address: int, count: int) -> Request:
    endpoint = args.serial or f"{args.host}:{args.port}"
    return Request(endpoint, args.unit, table, address, count, args.timeout, bool(args.serial))


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


def render_bits(bits: Sequence[bool], address: int) -> list[str]:
    return [f"{address + i:>6} {'on' if b else 'off'}" for i, b in enumerate(bits)]


def _printable(data: bytes) -> str:
    return "".join(chr(b) if 32 <= b < 127 else "." for b in data)


async def read(args: argparse.Namespace, out: TextIO) -> int:
    req = request_of(args, args.table, args.address, args.count)
    transport = transport_for(args)
    try:
        data = await transport.read(args.table, args.address, args.count, args.unit)
    except DriverError as exc:
        print(explain(exc, req), file=sys.stderr)
        return exit_code(exc)
    finally:
        await transport.close()
    print(f"unit {args.unit} {req.span}", file=out)
    if args.table in BIT_TABLES:
        lines = render_bits([bool(b) for b in data], args.address)
    else:
        lines = render([int(w) for w in data], args.address)
    for line in lines:
        print(line, file=out)
    return OK


def _where(point: ModbusPoint) -> str:
    span = f"{point.address}" if point.count == 1 else (
        f"{point.address}..{point.address + point.count - 1}")  # fmt: skip
    bit = f" bit {point.bit}" if point.data_type == "bit" else ""
    return f"{point.table} {span}{bit}"


def _raw(point: ModbusPoint, data: Sequence[int] | Sequence[bool]) -> str:
    if point.table in BIT_TABLES:
        return " ".join(str(int(b)) for b in data)
    return " ".join(f"0x{int(w):04X}" for w in data)


def shown(value: Value, point: ModbusPoint) -> str:
    """A decoded value as the dashboard shows it: the point's decimals (float32 noise such as
    0.3197032 is not the sensor's resolution), on/off for a bit or coil."""
    if value is None:
        return "-"  # a sentinel or an invalid number: the edge sends no value either
    if isinstance(value, bool):
        return "on" if value else "off"
    decimals = point_decimals(point)
    if decimals is not None and isinstance(value, int | float):
        return f"{value:.{decimals}f}"
    return _fmt(value) if isinstance(value, float) else str(value)


async def read_profile(args: argparse.Namespace, profile: ModbusProfile, out: TextIO) -> int:
    """Every point of ``profile``, read and decoded as the edge would; one request each."""
    print(f"unit {args.unit} as {profile.id} ({profile.name})", file=out)
    print(f"{'point':<16} {'where':<18} {'raw':<24} {'value':>12} {'unit':<6} quality", file=out)
    transport = transport_for(args)
    worst = OK
    try:
        for name, point in profile.points.items():
            req = request_of(args, point.table, point.address, point.count)
            try:
                data = await transport.read(point.table, point.address, point.count, args.unit)
            except DriverError as exc:
                print(f"{name:<16} {_where(point):<18} not read: {explain(exc, req)}", file=out)
                if isinstance(exc, CommunicationError):  # the rest would only wait as long
                    print(explain(exc, req), file=sys.stderr)
                    return UNREACHABLE
                worst = REFUSED
                continue
            value, quality = decode(data, point)
            print(f"{name:<16} {_where(point):<18} {_raw(point, data):<24} {shown(value, point):>12} "
                  f"{point.unit:<6} {quality.value}", file=out)  # fmt: skip
    finally:
        await transport.close()
    if worst == REFUSED:
        print(f"unit {args.unit} refused some points of {profile.id}: see 'not read' above",
              file=sys.stderr)  # fmt: skip
    return worst


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
        print(f"no unit 1..247 answered at {args.serial or f'{args.host}:{args.port}'}",
              file=sys.stderr)  # fmt: skip
    return OK if answering else UNREACHABLE


class ProfileProblem(Exception):
    """``--profile`` names nothing usable; the message says why and what exists."""


def find_profile(name: str) -> ModbusProfile:
    """A shipped profile by id, or a profile file by path."""
    path = Path(name)
    try:
        if path.suffix in (".yaml", ".yml") or path.is_file():
            profile = load_profile(path)
        else:
            shipped = load_profiles(default_profiles_dir())
            if name not in shipped:
                modbus = sorted(p for p, v in shipped.items() if isinstance(v, ModbusProfile))
                raise ProfileProblem(
                    f"no shipped profile {name!r}; Modbus profiles shipped: {', '.join(modbus)}; "
                    "or give a profile file's path"
                )
            profile = shipped[name]
    except ConfigError as exc:  # its message names file, line and key path
        raise ProfileProblem(f"profile {exc}") from exc
    except OSError as exc:
        raise ProfileProblem(f"profile {name}: {exc.strerror or exc}") from exc
    if not isinstance(profile, ModbusProfile):
        raise ProfileProblem(f"profile {profile.id!r} is an MQTT profile; probe modbus reads "
                             "Modbus profiles")  # fmt: skip
    return profile


def _usage_error(args: argparse.Namespace) -> str:
    limit = MAX_BITS if args.table in BIT_TABLES else MAX_REGISTERS
    if not 1 <= args.count <= limit:
        return f"--count must be 1..{limit} for --table {args.table}"
    if args.address < 0 or args.address + args.count > 65536:
        return "--address must be 0 or more, and --address + --count at most 65536"
    if not 0 <= args.unit <= 247:
        return "--unit must be 0..247"
    if args.profile and args.scan:
        return "--profile reads one unit; --scan looks for units: give one of them"
    return ""


def main(args: argparse.Namespace, out: TextIO | None = None) -> int:
    problem = _usage_error(args)
    profile = None
    if not problem and args.profile:
        try:
            profile = find_profile(args.profile)
        except ProfileProblem as exc:
            problem = str(exc)
    if problem:
        print(f"gridwatch probe modbus: {problem}", file=sys.stderr)
        return USAGE
    out = out or sys.stdout
    if profile is not None:
        return asyncio.run(read_profile(args, profile, out))
    return asyncio.run(scan(args, out) if args.scan else read(args, out))
