"""Modbus driver: polls every device of one bus (TCP endpoint or serial line) on its own clock.

Each device has its own task: it sleeps until its next tick (interval, phase offset), reads its
planned requests through the bus's :class:`~drivers.transport.ModbusTransport` (whose pool
bounds requests in flight), decodes with compiled point decoders, and hands exactly one
:class:`~drivers.base.PollOutcome` per tick to the sink. A failed device yields COMM_ERROR
samples with value None, never 0 and never its last value, and backs off without slowing its
neighbours: they only share the transport's pool, never a device's retry loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from drivers.base import PollOutcome, Sample, SampleSink
from drivers.codec import BlockDecoder, CodecError, Decoded, PointDecoder, compile_point
from drivers.errors import (
    BadConfig,
    CommunicationError,
    ConnectError,
    DeviceBusy,
    DeviceFailure,
    DeviceRefused,
    EncodeError,
    IllegalAddress,
    UnknownPoint,
)
from drivers.health import DeviceStats
from drivers.planner import ReadPlan, ReadRequest
from drivers.scheduler import REPOLL_MAX_S, DeviceHold, Ticker, phase_offsets
from drivers.transport import ModbusTransport, serial_transport, tcp_transport
from gridwatch.ground.contract import BusHealth, DeviceHealth, Quality
from gridwatch.ground.gatewayconf import ModbusRtuBus, ModbusTcpBus, ResolvedDevice
from gridwatch.ground.logfmt import log_context
from gridwatch.ground.profiles import ModbusProfile

logger = logging.getLogger(__name__)

RECHECK_BAD_S = 600.0  # refused points get another chance (firmware may have been updated)
_UNREAD: Decoded = (None, Quality.INVALID)  # a point the device refuses to serve


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class DevicePoller:
    """One device: its read plan, decoders, backoff and counters."""

    def __init__(
        self, device: ResolvedDevice, transport: ModbusTransport, *, max_gap: int = 8
    ) -> None:
        if not isinstance(device.profile, ModbusProfile):
            raise BadConfig("not a Modbus profile", device_id=device.id)
        self.id = device.id
        self.unit = device.entry.unit_id
        self.interval = device.interval_s
        self.points = dict(device.profile.points)
        self.transport = transport
        self.plan = ReadPlan(self.points, max_gap=max_gap)
        self.decoders: dict[str, PointDecoder] = {
            n: compile_point(p) for n, p in self.points.items()
        }
        self.units = {n: p.unit for n, p in self.points.items()}
        # per request of the plan, by identity: hashing a request hashes all its slices
        self._blocks: dict[int, tuple[ReadRequest, BlockDecoder]] = {}
        self.stats = DeviceStats(self.id)
        self.backoff = DeviceHold(base_s=self.interval, max_s=max(REPOLL_MAX_S, self.interval))
        self._recheck_at = 0.0

    async def run(self, sink: SampleSink, first_due: float) -> None:
        """Poll on every tick until cancelled."""
        log_context(device=self.id)  # this task's records name the device (JSON logs)
        loop = asyncio.get_running_loop()
        ticker = Ticker(self.interval, first_due)
        while True:
            await asyncio.sleep(max(0.0, ticker.due - loop.time()))
            try:
                sink(await self.poll(loop.time()))
            except Exception:  # a bug here must not stop the other devices' polling
                logger.exception("%s: poll failed unexpectedly", self.id)
            missed = ticker.advance(loop.time())
            if missed:
                self.stats.polls_skipped += missed
                logger.debug("%s: poll overran, %d tick(s) skipped", self.id, missed)

    async def poll(self, now: float) -> PollOutcome:
        """One poll: read, decode, judge; never raises a communication error."""
        if self.backoff.holds(now):
            error = f"unreachable, next attempt in {self.backoff.retry_at - now:.1f}s"
            self.stats.failed(error, attempted=False)
            return self._failed(error)
        self._maybe_recheck(now)
        t0 = time.perf_counter()
        try:
            values = await self._read_all()
        except CommunicationError as exc:
            # a bus that cannot be opened is paced by its own reconnect backoff: holding the
            # device as well would add the two waits up (33-49 s before a returned bus was read)
            if not isinstance(exc, ConnectError):
                self.backoff.failed(asyncio.get_running_loop().time())
            error = (
                f"{exc.reason} (address {exc.address})" if exc.address is not None else exc.reason
            )
            self.stats.failed(error)
            return self._failed(error)
        ms = (time.perf_counter() - t0) * 1000.0
        ts = _now_ms()
        self.backoff.succeeded()
        self.stats.ok(ts, ms)
        dev, units = self.id, self.units
        samples = []
        for name in self.points:
            value, quality = values.get(name, _UNREAD)
            samples.append(Sample(dev, name, value, units[name], ts, quality))
        return PollOutcome(dev, ts, samples, ok=True, response_ms=ms)

    def _failed(self, error: str) -> PollOutcome:
        ts = _now_ms()
        samples = [
            Sample(self.id, n, None, self.units[n], ts, Quality.COMM_ERROR) for n in self.points
        ]
        return PollOutcome(self.id, ts, samples, ok=False, error=error)

    def _maybe_recheck(self, now: float) -> None:
        if self.plan.bad and now >= self._recheck_at:
            if self._recheck_at:
                self.plan.reset()
            self._recheck_at = now + RECHECK_BAD_S

    async def _read_all(self) -> dict[str, Decoded]:
        values: dict[str, Decoded] = {}
        pending = list(self.plan.requests)
        while pending:
            req = pending.pop(0)
            try:
                words = await self.transport.read(req.table, req.start, req.count, self.unit,
                                                  self.id)  # fmt: skip
            except IllegalAddress:
                pending[:0] = self._split(req)
                continue
            except DeviceRefused as exc:
                busy = isinstance(exc, DeviceBusy | DeviceFailure)
                quality = Quality.COMM_ERROR if busy else Quality.INVALID
                values.update((s.name, (None, quality)) for s in req.slices)
                continue
            # an entry keeps its request alive, so no other request can take its id
            cached = self._blocks.get(id(req))
            if cached is None:
                live = {id(r) for r in self.plan.requests}  # the plan changed: forget the old
                self._blocks = {k: v for k, v in self._blocks.items() if k in live}
                block = BlockDecoder(
                    req.count, [(s.name, s.offset, self.decoders[s.name]) for s in req.slices]
                )
                cached = self._blocks[id(req)] = (req, block)
            cached[1].decode_into(words, values)
        return values

    def _split(self, req: ReadRequest) -> list[ReadRequest]:
        halves = self.plan.split(req)
        if not halves:
            names = ", ".join(s.name for s in req.slices)
            logger.warning("%s: refuses address %d (%s): reported invalid", self.id, req.start,
                           names)  # fmt: skip
        return halves

    async def write(self, name: str, value: float | int | bool) -> None:
        point = self.points.get(name)
        if point is None or not point.writable or point.table in ("input", "discrete"):
            raise UnknownPoint(f"no writable point {name!r}", device_id=self.id)
        dec = self.decoders[name]
        current = 0
        if dec.kind == "bitreg":  # read-modify-write: the other bits of the register stay
            (current,) = await self.transport.read(point.table, point.address, 1, self.unit,
                                                   self.id)  # fmt: skip
        try:
            words = dec.encode(value, int(current))
        except CodecError as exc:
            raise EncodeError(str(exc), device_id=self.id, address=point.address) from exc
        await self.transport.write(point.table, point.address, words, self.unit, self.id)


class ModbusDriver:
    """The :class:`drivers.base.Driver` for one Modbus TCP or RTU bus and its devices.

    ``ModbusDriver(bus, devices)`` builds the transport from the bus; tests and benchmarks may
    pass their own ``transport``. ``max_gap`` is the planner's merge distance in registers.
    """

    def __init__(
        self,
        bus: ModbusTcpBus | ModbusRtuBus,
        devices: Sequence[ResolvedDevice],
        *,
        transport: ModbusTransport | None = None,
        max_gap: int = 8,
    ) -> None:
        self.bus = bus
        for d in devices:
            _check_device(bus, d)
        if transport is None:
            transport = (
                tcp_transport(bus) if isinstance(bus, ModbusTcpBus) else serial_transport(bus)
            )
        self.transport = transport
        self.pollers = {d.id: DevicePoller(d, transport, max_gap=max_gap) for d in devices}

    async def run(self, sink: SampleSink) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        pollers = list(self.pollers.values())
        offsets = phase_offsets([p.interval for p in pollers])
        logger.info("bus %s: polling %d device(s)", self.bus.id, len(pollers))
        try:
            async with asyncio.TaskGroup() as tg:
                for poller, offset in zip(pollers, offsets, strict=True):
                    tg.create_task(poller.run(sink, start + offset),
                                   name=f"modbus {self.bus.id}/{poller.id}")  # fmt: skip
        finally:
            await self.transport.close()

    async def write(self, device: str, point: str, value: float | int | bool) -> None:
        poller = self.pollers.get(device)
        if poller is None:
            raise UnknownPoint(f"no device {device!r} on bus {self.bus.id}", device_id=device)
        await poller.write(point, value)

    def health(self) -> list[DeviceHealth]:
        return [p.stats.snapshot() for p in self.pollers.values()]

    def bus_health(self) -> BusHealth:
        bus = self.bus
        address = f"{bus.host}:{bus.port}" if isinstance(bus, ModbusTcpBus) else bus.port
        return self.transport.state.snapshot(bus.id, bus.type, address, list(self.pollers))


def _check_device(bus: ModbusTcpBus | ModbusRtuBus, device: ResolvedDevice) -> None:
    if device.bus.id != bus.id:
        raise BadConfig(f"is on bus {device.bus.id!r}, not {bus.id!r}", device_id=device.id)
    if bus.timeout_s >= device.interval_s:
        raise BadConfig(
            f"bus timeout {bus.timeout_s}s must be shorter than the poll interval "
            f"{device.interval_s}s",
            device_id=device.id,
        )
