"""Simulated Modbus RTU lines that keep the baud rate's timing.

A pseudo-terminal moves bytes instantly whatever its baud rate, so a serial simulator that
answers at once lets a driver reach rates no RS-485 line allows. :class:`RtuLine` answers each
request when its last response byte would arrive on a real line: request frame, 3.5-character
gap, the device's turnaround, response frame (see :mod:`gridwatch.top.sim.rtuwire`), and it keeps
the line busy for the gap after that, so requests sent too early wait for the wire.

:class:`RtuField` serves the devices of every ``modbus_rtu`` bus of a gateway config from
their profiles, like :class:`~gridwatch.top.sim.modbus.SimField` does for TCP, and is steered the
same way. For each bus it starts ``socat`` with one end linked at the bus's ``port`` (where the
driver opens it) and serves the other end, unless the caller passes that end in ``ends``::

    async with RtuField(devices) as field:       # devices on a bus with port /tmp/x/ttyA
        field.kill("wl-002")
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import shutil
import struct
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from gridwatch.ground.gatewayconf import ModbusRtuBus, ResolvedDevice
from gridwatch.ground.profiles import ModbusPoint
from gridwatch.top.sim.modbus import FC_TABLE, ModbusSimBase, SimUnit, _check_unique_units
from gridwatch.top.sim.rtuwire import (
    READ_BITS,
    READ_WORDS,
    LineTiming,
    crc16,
    request_length,
)

logger = logging.getLogger(__name__)

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3
STALE_PARTIAL_S = 0.05  # a partial frame older than this is line noise: drop it
# The event loop wakes in whole milliseconds (epoll), about 0.6 ms late on average: 1.5-4% of
# an exchange at 9600 baud, charged to the driver. Wake this much early and spin the rest.
SPIN_S = 0.0012
LIMITS = {1: 2000, 2: 2000, 3: 125, 4: 125, 15: 1968, 16: 123}


class _Refused(Exception):
    def __init__(self, code: int) -> None:
        self.code = code


def answer(unit: SimUnit, pdu: bytes) -> bytes:
    """The response PDU (function code onwards) to a request PDU; writes change the unit."""
    fc = pdu[0]
    try:
        if fc in READ_BITS or fc in READ_WORDS:
            return _read(unit, fc, *struct.unpack_from(">HH", pdu, 1))
        if fc in (5, 6):
            return _write_single(unit, fc, pdu)
        if fc in (15, 16):
            return _write_multiple(unit, fc, pdu)
        raise _Refused(ILLEGAL_FUNCTION)
    except _Refused as exc:
        return bytes((fc | 0x80, exc.code))
    except struct.error:
        return bytes((fc | 0x80, ILLEGAL_VALUE))


def _check(unit: SimUnit, fc: int, address: int, count: int) -> str:
    table = FC_TABLE[fc]
    if not 1 <= count <= LIMITS.get(fc, 1):
        raise _Refused(ILLEGAL_VALUE)
    span = unit.mapped(table)
    if span is None or address < span[0] or address + count - 1 > span[1]:
        raise _Refused(ILLEGAL_ADDRESS)
    if any((table, a) in unit.illegal for a in range(address, address + count)):
        raise _Refused(ILLEGAL_ADDRESS)
    return table


def _read(unit: SimUnit, fc: int, address: int, count: int) -> bytes:
    table = _check(unit, fc, address, count)
    if fc in READ_WORDS:
        unit.count_read(table, address, count)  # counters land in the shadow it reads
    shadow = unit.shadow
    values = [shadow.get((table, a), 0) for a in range(address, address + count)]
    if fc in READ_WORDS:
        return struct.pack(f">BB{count}H", fc, 2 * count, *values)
    packed = bytearray((count + 7) // 8)
    for i, bit in enumerate(values):
        if bit:
            packed[i // 8] |= 1 << (i % 8)
    return bytes((fc, len(packed))) + bytes(packed)


def _write_single(unit: SimUnit, fc: int, pdu: bytes) -> bytes:
    address, value = struct.unpack_from(">HH", pdu, 1)
    table = _check(unit, fc, address, 1)
    if fc == 5 and value not in (0x0000, 0xFF00):
        raise _Refused(ILLEGAL_VALUE)
    unit.shadow[(table, address)] = (1 if value else 0) if fc == 5 else value
    return pdu[:5]


def _write_multiple(unit: SimUnit, fc: int, pdu: bytes) -> bytes:
    address, count, nbytes = struct.unpack_from(">HHB", pdu, 1)
    table = _check(unit, fc, address, count)
    data = pdu[6 : 6 + nbytes]
    if fc == 16:
        values = list(struct.unpack(f">{count}H", data))
    else:
        values = [(data[i // 8] >> (i % 8)) & 1 for i in range(count)]
    for i, v in enumerate(values):
        unit.shadow[(table, address + i)] = v
    return pdu[:5]


class RtuLine:
    """One RS-485 line: a pty end, the units on it, and when the wire is next free."""

    def __init__(self, path: str, units: Sequence[SimUnit], timing: LineTiming) -> None:
        self.path = path
        self.units = {u.unit: u for u in units}
        self.timing = timing
        self.requests = 0  # frames taken off the line
        self.answered = 0
        self.free_at = 0.0  # loop time when the line falls silent for good
        self._rx = bytearray()
        self._first = 0.0  # when the first byte of the buffered frame arrived
        self._fd = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._fd = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        self._loop.add_reader(self._fd, self._readable)

    def close(self) -> None:
        if self._fd >= 0 and self._loop is not None:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
        self._fd = -1

    def _readable(self) -> None:
        assert self._loop is not None
        try:
            data = os.read(self._fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO: the pty's master (socat) is gone, the line is dead
            logger.error("sim %s: line lost: %s", self.path, exc)
            self._loop.remove_reader(self._fd)  # or the loop would spin on the error
            return
        now = self._loop.time()
        if self._rx and now - self._first > STALE_PARTIAL_S:
            self._rx.clear()
        if not self._rx:
            self._first = now
        self._rx += data
        self._take_frames()

    def _take_frames(self) -> None:
        while self._rx:
            n = request_length(bytes(self._rx[:7]))
            if n is None or len(self._rx) < n:
                return  # the rest of the frame is still on its way
            frame = bytes(self._rx[: n or len(self._rx)])
            del self._rx[: len(frame)]
            if len(frame) < 4 or crc16(frame[:-2]) != frame[-2:]:
                logger.debug("sim %s: bad frame %s dropped", self.path, frame.hex())
                self._rx.clear()  # a real device waits for silence to resynchronise
                return
            self._serve(frame, self._first)

    def _serve(self, frame: bytes, arrived: float) -> None:
        assert self._loop is not None
        self.requests += 1
        timing = self.timing
        start = max(arrived, self.free_at)  # a request sent too early waits for the wire
        unit = self.units.get(frame[0])
        if unit is None or not unit.alive.is_set():  # nobody answers: the line stays silent
            self.free_at = start + timing.frame_s(len(frame)) + timing.gap_s
            return
        reply = frame[:1] + answer(unit, frame[1:-2])
        reply += crc16(reply)
        due = start + timing.answer_s(len(frame), len(reply)) + unit.delay_s
        self.free_at = due + timing.gap_s
        self._loop.call_at(due - SPIN_S, self._send, reply, due)

    def _send(self, reply: bytes, due: float) -> None:
        assert self._loop is not None
        while self._loop.time() < due:
            pass  # at most SPIN_S: the answer leaves when its last byte would arrive
        try:
            os.write(self._fd, reply)
            self.answered += 1
        except OSError as exc:
            logger.debug("sim %s: answer lost: %s", self.path, exc)


class RtuField(ModbusSimBase):
    """Serves every Modbus RTU device of ``devices``, one :class:`RtuLine` per bus.

    ``ends`` maps a bus id to the pty end to serve when the caller made the serial pair;
    otherwise a socat pair is made with its other end linked at the bus's ``port``.
    ``turnaround_s`` is every device's think time before it answers.
    """

    def __init__(
        self,
        devices: Sequence[ResolvedDevice],
        *,
        ends: Mapping[str, str] | None = None,
        turnaround_s: float = 0.0,
        speedup: float = 1.0,
        update_s: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(speedup=speedup, update_s=update_s)
        rng = random.Random(seed)
        self.ends = dict(ends or {})
        self.turnaround_s = turnaround_s
        self.buses: dict[str, ModbusRtuBus] = {}
        self.by_bus: dict[str, list[SimUnit]] = {}
        for d in devices:
            if isinstance(d.bus, ModbusRtuBus):
                unit = SimUnit(d, rng)
                self.units[d.id] = unit
                self.buses[d.bus.id] = d.bus
                self.by_bus.setdefault(d.bus.id, []).append(unit)
        self.lines: dict[str, RtuLine] = {}
        self._socats: list[asyncio.subprocess.Process] = []
        self._drains: list[asyncio.Task[None]] = []
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    async def start(self) -> None:
        try:
            for bus_id, units in self.by_bus.items():
                bus = self.buses[bus_id]
                _check_unique_units(f"bus {bus_id}", units)
                end = self.ends.get(bus_id) or await self._pair(bus)
                if bus.parity != "N":
                    logger.warning("sim: bus %s: a pty refuses parity %s, so a driver cannot "
                                   "open %s; 8N2 has 8E1's timing", bus_id, bus.parity,
                                   bus.port)  # fmt: skip
                timing = LineTiming(bus.baudrate, bus.bytesize, bus.parity, bus.stopbits,
                                    self.turnaround_s)  # fmt: skip
                line = RtuLine(end, units, timing)
                line.open()
                self.lines[bus_id] = line
                logger.info("sim: serving %d device(s) on %s at %d baud (units %s)", len(units),
                            bus.port, bus.baudrate, ",".join(str(u.unit) for u in units))  # fmt: skip
            await self._start_animation()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        await self._stop_animation()
        for line in self.lines.values():
            line.close()
        self.lines.clear()
        for proc in self._socats:
            if proc.returncode is None:
                proc.terminate()
            await proc.wait()
        self._socats.clear()
        for task in self._drains:
            task.cancel()
        await asyncio.gather(*self._drains, return_exceptions=True)
        self._drains.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    async def _pair(self, bus: ModbusRtuBus) -> str:
        """Start ``socat`` with one pty linked at the bus's port; return the other end."""
        socat = shutil.which("socat")
        if socat is None:
            raise RuntimeError("the RTU simulator needs socat (Debian package `socat`)")
        client_end = _free_link(bus.port)
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="gridwatch-rtu-")
        server_end = str(Path(self._tmp.name) / bus.id)
        proc = await asyncio.create_subprocess_exec(
            socat, "-d", "-d", f"pty,raw,echo=0,link={client_end}",
            f"pty,raw,echo=0,link={server_end}", stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        self._socats.append(proc)
        assert proc.stderr is not None
        async with asyncio.timeout(10):
            while b"starting data transfer loop" not in (line := await proc.stderr.readline()):
                if not line:
                    raise RuntimeError(f"socat for {bus.port} exited before it was ready")
        self._drains.append(asyncio.create_task(_drain(proc.stderr), name=f"socat {bus.id}"))
        return server_end

    async def _store(self, unit: SimUnit, point: ModbusPoint, words: list[int]) -> None:
        """Nothing to do: :meth:`SimUnit.words` already put them in the unit's registers."""


def _free_link(path: str) -> Path:
    """Where socat may put a link: absent, or a stale link from an earlier run."""
    link = Path(path)
    if link.exists() and not link.is_symlink():
        raise RuntimeError(f"{path} exists and is not a link of ours: not replacing it")
    link.unlink(missing_ok=True)
    return link


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass
