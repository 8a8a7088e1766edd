"""Modbus transport: the wire behind a small interface (read a range, write words).

One :class:`ModbusTransport` per endpoint (a TCP host:port or a serial line) holds a pool of
pymodbus clients. pymodbus runs one transaction at a time per client, so the pool size is the
number of requests in flight: ``max_concurrency`` connections for TCP, exactly one for a serial
line, where the pool slot doubles as the line lock and is held for the inter-frame silence the
baud rate requires. Every pymodbus exception is converted in :func:`drivers.errors.modbus_errors`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.framer import FramerType

from drivers.errors import ConnectError, check_response, modbus_errors
from drivers.health import BusState
from drivers.scheduler import REPOLL_MAX_S
from gridwatch.ground.backoff import Backoff
from gridwatch.ground.gatewayconf import ModbusRtuBus, ModbusTcpBus

logger = logging.getLogger(__name__)

ClientFactory = Callable[[], Any]

# register kind -> pymodbus read call; the response attribute that holds the data
READ_CALLS: dict[str, tuple[str, str]] = {
    "holding": ("read_holding_registers", "registers"),
    "input": ("read_input_registers", "registers"),
    "coil": ("read_coils", "bits"),
    "discrete": ("read_discrete_inputs", "bits"),
}
NO_REPLY = 1 << 30  # pymodbus closes a connection after N silent requests: we decide that
TIMEOUTS_BEFORE_RECONNECT = 5  # consecutive, with no answer from anyone in between
MIN_FRAME_GAP_S = 0.00175  # Modbus over serial line spec: fixed 1.75 ms above 19200 baud


def quiet_pymodbus() -> None:
    """pymodbus logs every timeout at ERROR; we log outages once, per device, ourselves."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def char_time_s(baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> float:
    """Seconds one character occupies on the line (start + data + parity + stop bits)."""
    return (1 + bytesize + (0 if parity == "N" else 1) + stopbits) / baudrate


def frame_gap_s(baudrate: int, bytesize: int = 8, parity: str = "N", stopbits: int = 1) -> float:
    """The 3.5-character silence that delimits RTU frames."""
    if baudrate > 19200:
        return MIN_FRAME_GAP_S
    return 3.5 * char_time_s(baudrate, bytesize, parity, stopbits)


def _raise_swallowed_cancel() -> None:
    """pymodbus waits for answers with ``asyncio.wait_for``, which on Python 3.11 returns the
    answer and drops the CancelledError when a cancellation lands as the answer arrives
    (CPython gh-86296). The poller then polls on and the edge never stops (seen under load on
    SIGTERM): a cancellation still pending on the task is raised here instead."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


class _Slot:
    """One client connection of the pool, with its own reconnect pacing."""

    def __init__(self, factory: ClientFactory) -> None:
        self.factory = factory
        self.client: Any = None
        self.retry_at = 0.0
        self.waits = Backoff(0.25, REPOLL_MAX_S)  # between connects to an unreachable bus
        self.silent = 0  # consecutive timeouts
        self.quiet_until = 0.0  # monotonic time before which the line must stay silent

    async def ensure(self, name: str) -> Any:
        if self.client is not None and self.client.connected:
            return self.client
        now = time.monotonic()
        if now < self.retry_at:
            raise ConnectError(f"{name} unreachable; next connect in {self.retry_at - now:.1f}s")
        self.drop()
        client = self.factory()
        client.set_max_no_responses(NO_REPLY)
        if not await client.connect():
            client.close()
            self.retry_at = now + self.waits.next()
            raise ConnectError(f"cannot connect to {name}")
        self.client, self.silent = client, 0
        self.waits.reset()
        return client

    def drop(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None


class ModbusTransport:
    """A pool of connections to one endpoint; ``size`` requests in flight at most."""

    def __init__(
        self, factory: ClientFactory, size: int = 1, *, name: str = "", gap_s: float = 0.0
    ) -> None:
        quiet_pymodbus()
        self.name = name
        self.gap_s = gap_s
        self.state = BusState()  # the endpoint reachable or not, for the health report
        self.waiting = 0  # requests waiting for a free slot: at most one per device
        self.peak_waiting = 0
        self._idle: asyncio.Queue[_Slot] = asyncio.Queue()
        self._slots = [_Slot(factory) for _ in range(size)]
        for slot in self._slots:
            self._idle.put_nowait(slot)

    @asynccontextmanager
    async def _slot(self) -> AsyncIterator[_Slot]:
        self.waiting += 1
        self.peak_waiting = max(self.peak_waiting, self.waiting)
        try:
            slot = await self._idle.get()
        finally:
            self.waiting -= 1
        try:
            # The frame gap runs from the end of the last exchange: time the next poller
            # spent getting here already counts towards it, so only the rest is waited.
            wait = slot.quiet_until - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            yield slot
        finally:
            if self.gap_s:
                slot.quiet_until = time.monotonic() + self.gap_s
            self._idle.put_nowait(slot)

    async def read(
        self, table: str, start: int, count: int, unit: int, device_id: str = ""
    ) -> list[int] | list[bool]:
        call, attr = READ_CALLS[table]
        async with self._slot() as slot:
            resp = await self._execute(slot, unit, device_id, start, call, start, count=count)
        check_response(resp, device_id=device_id, address=start)
        data: list[int] | list[bool] = getattr(resp, attr)
        return data[:count]

    async def write(
        self, table: str, address: int, words: list[int], unit: int, device_id: str = ""
    ) -> None:
        arg: bool | int | list[int]
        if table == "coil":
            call, arg = "write_coil", bool(words[0])
        elif len(words) == 1:
            call, arg = "write_register", words[0]
        else:
            call, arg = "write_registers", words
        async with self._slot() as slot:
            resp = await self._execute(slot, unit, device_id, address, call, address, arg)
        check_response(resp, device_id=device_id, address=address)

    async def _execute(
        self, slot: _Slot, unit: int, who: str, address: int, call: str, *args: Any, **kw: Any
    ) -> Any:
        """``client.<call>(*args, **kw, device_id=unit)``; errors name device ``who``."""
        with modbus_errors(who, address):
            try:
                try:
                    client = await slot.ensure(self.name)
                except ConnectError:
                    self.state.down(f"{self.name} unreachable")
                    raise
                self.state.up()
                try:
                    resp = await getattr(client, call)(*args, **kw, device_id=unit)
                except Exception as exc:  # re-raised at once, converted by modbus_errors
                    self._note_failure(slot, exc)
                    raise
            finally:
                _raise_swallowed_cancel()
        slot.silent = 0
        return resp

    def _note_failure(self, slot: _Slot, exc: Exception) -> None:
        """Drop a connection that went silent for everyone, or that the peer closed."""
        if "No response" in str(exc):
            slot.silent += 1
            if slot.silent < TIMEOUTS_BEFORE_RECONNECT:
                return
            logger.debug("%s: %d silent requests in a row, reconnecting", self.name, slot.silent)
        slot.drop()

    async def close(self) -> None:
        for slot in self._slots:
            slot.drop()


def tcp_transport(bus: ModbusTcpBus) -> ModbusTransport:
    framer = FramerType.RTU if bus.framer == "rtu" else FramerType.SOCKET

    def factory() -> AsyncModbusTcpClient:
        return AsyncModbusTcpClient(
            bus.host, port=bus.port, framer=framer, timeout=bus.timeout_s, retries=0,
            reconnect_delay=0,
        )  # fmt: skip

    # RTU framing over TCP (a serial converter) has no transaction ids: one in flight.
    size = 1 if bus.framer == "rtu" else bus.max_concurrency
    return ModbusTransport(factory, size, name=f"{bus.id} ({bus.host}:{bus.port})")


def serial_transport(bus: ModbusRtuBus) -> ModbusTransport:
    def factory() -> AsyncModbusSerialClient:
        return AsyncModbusSerialClient(
            bus.port, framer=FramerType.RTU, baudrate=bus.baudrate, bytesize=bus.bytesize,
            parity=bus.parity, stopbits=bus.stopbits, timeout=bus.timeout_s, retries=0,
            reconnect_delay=0,
        )  # fmt: skip

    gap = frame_gap_s(bus.baudrate, bus.bytesize, bus.parity, bus.stopbits)
    return ModbusTransport(factory, 1, name=f"{bus.id} ({bus.port})", gap_s=gap)
