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
from gridwatch.ground.i18n import N_, _
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
KIND = {"holding": N_("holding register"), "input": N_("input register"), "coil": N_("coil"),
        "discrete": N_("discrete input")}  # fmt: skip
KINDS = {"holding": N_("holding registers"), "input": N_("input registers"),
         "coil": N_("coils"), "discrete": N_("discrete inputs")}  # fmt: skip
"""``KIND`` for more than one: the words of each table are translated where they are shown."""
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
        if self.count == 1:
            return f"{_(KIND[self.table])} {self.address}"
        return f"{_(KINDS[self.table])} {self.address}..{self.address + self.count - 1}"


# Modbus exception code -> (its name in the specification, what happened, what to check).
# Fields: {unit} {span} {kinds} {fc} {endpoint}. 0x0A and 0x0B come from a TCP gateway. The
# specification's names stay English: they are what manuals and forums search for.
EXCEPTIONS: dict[int, tuple[str, str, str]] = {
    0x01: ("illegal function", N_("unit {unit} does not serve {kinds} (function {fc})"),
           N_("try another --table, as its manual's register map lists them")),
    0x02: ("illegal data address", N_("{span} does not exist on unit {unit}"),
           N_("check the address in the device's register map")),
    0x03: ("illegal data value", N_("unit {unit} refused reading {span}"),
           N_("the count may be more than it serves in one request; try a smaller --count")),
    0x04: ("server device failure", N_("unit {unit} failed while reading {span}"),
           N_("the device reports an internal fault")),
    0x05: ("acknowledge", N_("unit {unit} accepted the request but needs longer"),
           N_("try again")),
    0x06: ("server device busy", N_("unit {unit} is busy"), N_("try again in a moment")),
    0x08: ("memory parity error", N_("unit {unit} reports a memory parity error"),
           N_("the device needs service")),
    0x0A: ("gateway path unavailable",
           N_("the converter at {endpoint} answered but has no path to unit {unit}"),
           N_("check its routing or serial-port settings")),
    0x0B: ("gateway target device failed to respond",
           N_("the converter at {endpoint} answered but unit {unit} behind it did not"),
           N_("check the unit id, the RS-485 wiring and the converter's baud rate and parity")),
}  # fmt: skip
_UNKNOWN = ("unknown exception", N_("unit {unit} refused {span}"), "")
# English says "do not" of more than one register; a fact of its own, not a placeholder, so that
# a language without that agreement translates it whole
_MORE_THAN_ONE = {0x02: N_("{span} do not exist on unit {unit}")}


def exception_text(code: int, req: Request) -> str:
    """A Modbus exception in words, naming the unit and registers of ``req``."""
    name, fact, advice = EXCEPTIONS.get(code, _UNKNOWN)
    if req.count > 1:
        fact = _MORE_THAN_ONE.get(code, fact)
    fact = _(fact).format(unit=req.unit, span=req.span, kinds=_(KINDS[req.table]),
                          fc=FUNCTION[req.table], endpoint=req.endpoint)  # fmt: skip
    text = _("{fact} (Modbus exception {code:#04x}: {name})").format(
        fact=f"{fact[0].upper()}{fact[1:]}", code=code, name=name
    )
    if advice:
        text += f": {_(advice)}"
    base = MANUAL_BASE.get(req.table)
    if code == 0x02 and base is not None and base <= req.address < base + 10000:
        text += _("; manuals often number {kinds} from {base}, which is address 0 here: "
                  "{address} would be --address {fixed}").format(
            kinds=_(KINDS[req.table]), base=base, address=req.address,
            fixed=req.address - base)  # fmt: skip
    return text


def explain(exc: DriverError, req: Request) -> str:
    """What went wrong with ``req``, in words, from the error's type and code (never its text)."""
    if isinstance(exc, DeviceRefused | GatewayNoResponse):
        return exception_text(exc.code, req)
    if isinstance(exc, ConnectError):
        if req.serial:
            return _("Cannot connect to {endpoint}: check the serial device").format(
                endpoint=req.endpoint
            )
        return _("Cannot connect to {endpoint}: check the address, the port and the network"
                 ).format(endpoint=req.endpoint)  # fmt: skip
    if isinstance(exc, DeviceTimeout):
        check = _("unit id, wiring, baud rate and parity") if req.serial else _(
            "unit id, and that nothing else holds the device's only connection")  # fmt: skip
        return _("No answer from unit {unit} at {endpoint} within {timeout:g} s: check the "
                 "{check}").format(unit=req.unit, endpoint=req.endpoint,
                                   timeout=req.timeout_s, check=check)  # fmt: skip
    return _("Unit {unit} at {endpoint}: {reason}").format(
        unit=req.unit, endpoint=req.endpoint, reason=exc.reason
    )


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
    head = f"{'addr':>6} {'type':<8}" + "".join(f"{label:>22}" for label, _bo, _wo in ORDERS)
    lines = [
        "raw: " + " ".join(f"{address + i}=0x{w:04X}" for i, w in enumerate(words)),
        head,
        "-" * len(head),
    ]
    for offset in range(len(words)):
        for dtype, (_fc, n) in TYPES.items():
            if offset + n > len(words):
                continue
            chunk = words[offset : offset + n]
            cells = [_fmt(decode_raw(chunk, dtype, bo, wo)) for _label, bo, wo in ORDERS]
            lines.append(f"{address + offset:>6} {dtype:<8}" + "".join(f"{c:>22}" for c in cells))
    text = b"".join(w.to_bytes(2, "big") for w in words)
    swapped = b"".join(w.to_bytes(2, "little") for w in words)
    lines.append(f"string (AB): {_printable(text)!r}   string (BA): {_printable(swapped)!r}")
    return lines


def render_bits(bits: Sequence[bool], address: int) -> list[str]:
    return [f"{address + i:>6} {_('on') if b else _('off')}" for i, b in enumerate(bits)]


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
    print(_("unit {unit} {span}").format(unit=args.unit, span=req.span), file=out)
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
        return _("on") if value else _("off")
    decimals = point_decimals(point)
    if decimals is not None and isinstance(value, int | float):
        return f"{value:.{decimals}f}"
    return _fmt(value) if isinstance(value, float) else str(value)


async def read_profile(args: argparse.Namespace, profile: ModbusProfile, out: TextIO) -> int:
    """Every point of ``profile``, read and decoded as the edge would; one request each."""
    print(_("unit {unit} as {profile} ({name})").format(
        unit=args.unit, profile=profile.id, name=profile.name), file=out)  # fmt: skip
    print(f"{'point':<16} {'where':<18} {'raw':<24} {'value':>12} {'unit':<6} quality", file=out)
    transport = transport_for(args)
    worst = OK
    try:
        for name, point in profile.points.items():
            req = request_of(args, point.table, point.address, point.count)
            try:
                data = await transport.read(point.table, point.address, point.count, args.unit)
            except DriverError as exc:
                said = _("not read: {why}").format(why=explain(exc, req))
                print(f"{name:<16} {_where(point):<18} {said}", file=out)
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
        print(_("unit {unit} refused some points of {profile}: see 'not read' above").format(
            unit=args.unit, profile=profile.id), file=sys.stderr)  # fmt: skip
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
        print(_("unit {unit} answers").format(unit=unit), file=out)
    if not answering:
        print(_("no unit 1..247 answered at {endpoint}").format(
            endpoint=args.serial or f"{args.host}:{args.port}"), file=sys.stderr)  # fmt: skip
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
                    _(
                        "no shipped profile {name!r}; Modbus profiles shipped: {shipped}; or give "
                        "a profile file's path"
                    ).format(name=name, shipped=", ".join(modbus))
                )
            profile = shipped[name]
    except ConfigError as exc:  # its message names file, line and key path
        raise ProfileProblem(_("profile {problems}").format(problems=exc)) from exc
    except OSError as exc:
        raise ProfileProblem(_("profile {name}: {why}").format(
            name=name, why=exc.strerror or exc)) from exc  # fmt: skip
    if not isinstance(profile, ModbusProfile):
        raise ProfileProblem(_("profile {id!r} is an MQTT profile; probe modbus reads Modbus "
                               "profiles").format(id=profile.id))  # fmt: skip
    return profile


def _usage_error(args: argparse.Namespace) -> str:
    limit = MAX_BITS if args.table in BIT_TABLES else MAX_REGISTERS
    if not 1 <= args.count <= limit:
        return _("--count must be 1..{limit} for --table {table}").format(
            limit=limit, table=args.table
        )
    if args.address < 0 or args.address + args.count > 65536:
        return _("--address must be 0 or more, and --address + --count at most 65536")
    if not 0 <= args.unit <= 247:
        return _("--unit must be 0..247")
    if args.profile and args.scan:
        return _("--profile reads one unit; --scan looks for units: give one of them")
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
