"""Simulated Modbus TCP field: one pymodbus server per (host, port), a unit per device.

Register values come from each profile's ``sim:`` block, encoded with the same codec the
driver decodes with. Tests steer the field: pin a value, plant a raw sentinel, make a device
dead (never answers) or slow (answers after a delay), or make a point's address illegal.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import random
from collections.abc import Sequence

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from drivers.codec import PointDecoder, compile_point
from drivers.transport import quiet_pymodbus
from gridwatch.ground.gatewayconf import ModbusTcpBus, ResolvedDevice
from gridwatch.ground.profiles import ModbusPoint, ModbusProfile
from gridwatch.top.sim.behaviour import PointAnimator
from gridwatch.top.sim.served import Served

logger = logging.getLogger(__name__)

TABLES = ("coil", "discrete", "holding", "input")  # SimDevice's 4-tuple order
WRITE_FC = {"coil": 5, "discrete": 2, "holding": 16, "input": 4}
FC_TABLE = {1: "coil", 5: "coil", 15: "coil", 2: "discrete", 3: "holding", 6: "holding",
            16: "holding", 22: "holding", 23: "holding", 4: "input"}  # fmt: skip
Endpoint = tuple[str, int]

# Set in the simulator's own tasks: its register updates bypass dead/slow/illegal behaviour.
_internal = contextvars.ContextVar("sim_internal", default=False)


class SimUnit:
    """One simulated device: its points, animation and misbehaviour switches."""

    def __init__(self, device: ResolvedDevice, rng: random.Random) -> None:
        assert isinstance(device.profile, ModbusProfile)
        self.id = device.id
        self.unit = device.entry.unit_id
        self.interval = device.interval_s
        self.points: dict[str, ModbusPoint] = dict(device.profile.points)
        self.codecs: dict[str, PointDecoder] = {n: compile_point(p) for n, p in self.points.items()}
        sim = device.profile.sim
        self.animators = {n: PointAnimator(b, rng) for n, b in sim.items() if not b.counter}
        self.counters = {n: 0 for n, b in sim.items() if b.counter}  # reads served so far
        self.shadow: dict[tuple[str, int], int] = {}  # (table, address) -> word, for shared bits
        self.pinned: set[str] = set()
        self.alive = asyncio.Event()
        self.alive.set()
        self.delay_s = 0.0
        self.illegal: set[tuple[str, int]] = set()

    def mapped(self, table: str) -> tuple[int, int] | None:
        """First and last address the device serves in ``table`` (gaps read as zero)."""
        addrs = [a for p in self.points.values() if p.table == table
                 for a in range(p.address, p.address + p.count)]  # fmt: skip
        return (min(addrs), max(addrs)) if addrs else None

    def simdevice(self) -> SimDevice:
        blocks: list[list[SimData]] = []
        for table in TABLES:
            span = self.mapped(table)
            blocks.append([_block(table, *span)] if span else [_spare(table)])
        action = functools.partial(_action, self)
        return SimDevice(id=self.unit, simdata=(blocks[0], blocks[1], blocks[2], blocks[3]),
                         action=action)  # fmt: skip

    def count_read(self, table: str, address: int, count: int) -> list[tuple[int, list[int]]]:
        """A read covering a counter point serves its next number: (address, words) to serve."""
        served = []
        for name in self.counters:
            p = self.points[name]
            if name in self.pinned or p.table != table:
                continue
            if address <= p.address and p.address + p.count <= address + count:
                self.counters[name] += 1
                served.append((p.address, self.words(name, self.counters[name])))
        return served

    def words(self, name: str, value: float | int | bool | str, raw: bool = False) -> list[int]:
        point, codec = self.points[name], self.codecs[name]
        current = self.shadow.get((point.table, point.address), 0)
        words = codec.encode_raw(value) if raw and not isinstance(value, str) else (
            codec.encode(value, current))  # fmt: skip
        for i, w in enumerate(words):
            self.shadow[(point.table, point.address + i)] = w
        return words


def _block(table: str, first: int, last: int) -> SimData:
    """Every register from the first to the last point is mapped: gaps read as zero."""
    count = last - first + 1
    if table in ("coil", "discrete"):
        return SimData(first, values=[False] * count, datatype=DataType.BITS)
    return SimData(first, count=count, values=0, datatype=DataType.REGISTERS)


def _spare(table: str) -> SimData:
    """pymodbus wants a block in every table; park one far from any profile's points."""
    return _block(table, 60000, 60000)


async def _action(
    unit: SimUnit, fc: int, start: int, address: int, count: int,
    regs: list[int], values: list[int] | list[bool] | None,
) -> ExcCodes | None:  # fmt: skip
    if _internal.get():
        return None
    if not unit.alive.is_set():
        await unit.alive.wait()  # a dead device never answers; revive() releases it
    if unit.delay_s:
        await asyncio.sleep(unit.delay_s)
    table = FC_TABLE.get(fc, "")
    if any((table, a) in unit.illegal for a in range(address, address + count)):
        return ExcCodes.ILLEGAL_ADDRESS
    if values is None and table in ("holding", "input"):  # a register read: serve counters
        for at, words in unit.count_read(table, address, count):
            regs[at - start : at - start + len(words)] = words
    return None


def _catch_all() -> SimDevice:
    """Unit 0 answers for unknown unit ids the way a TCP gateway does (0x0B), so a scan
    doesn't mistake pymodbus's 'device failure' for a device."""

    async def no_device(*_args: object) -> ExcCodes:
        return ExcCodes.GATEWAY_NO_RESPONSE

    whole = [SimData(0, count=65536, values=0, datatype=DataType.REGISTERS)]
    bits = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
    return SimDevice(id=0, simdata=(bits, list(bits), whole, list(whole)), action=no_device)


class ModbusSimBase(Served):
    """What every simulated Modbus field shares: units animated from their profiles' ``sim:``
    blocks, and the switches tests steer them with. Subclasses store the words."""

    def __init__(self, *, speedup: float = 1.0, update_s: float | None = None) -> None:
        self.speedup = speedup
        self.update_s = update_s
        self.units: dict[str, SimUnit] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._t0 = 0.0

    async def _store(self, unit: SimUnit, point: ModbusPoint, words: list[int]) -> None:
        """Make ``words`` what the device serves at the point's address."""
        raise NotImplementedError

    async def _start_animation(self) -> None:
        self._t0 = asyncio.get_running_loop().time()
        for u in self.units.values():
            await self._update(u)
            task = asyncio.create_task(self._animate(u), name=f"sim {u.id}")
            self._tasks.append(task)

    async def _stop_animation(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for u in self.units.values():
            u.alive.set()  # release requests parked on a dead device
            for name, served in u.counters.items():  # how many reads the gateway was given
                logger.info("sim: %s %s served %d reads", u.id, name, served)

    async def _animate(self, unit: SimUnit) -> None:
        _internal.set(True)
        period = self.update_s or unit.interval
        while True:
            await asyncio.sleep(period)
            await self._update(unit)

    async def _update(self, unit: SimUnit) -> None:
        t = (asyncio.get_running_loop().time() - self._t0) * self.speedup
        for name, anim in unit.animators.items():  # points without a sim block stay zero
            if name not in unit.pinned:
                await self._put(unit, name, anim.value(t), raw=False)

    async def _put(self, unit: SimUnit, name: str, value: float | int | bool | str,
                   raw: bool) -> None:  # fmt: skip
        point = unit.points[name]
        try:
            words = unit.words(name, value, raw)
        except ValueError:
            logger.debug("sim %s.%s: %r does not fit %s", unit.id, name, value, point.data_type)
            return
        await self._store(unit, point, words)

    # --- what tests steer -------------------------------------------------------------

    async def set_value(self, device_id: str, point: str, value: float | int | bool | str) -> None:
        """Pin ``point`` to ``value`` (engineering units) until :meth:`release`."""
        unit = self.units[device_id]
        unit.pinned.add(point)
        await self._put(unit, point, value, raw=False)

    async def set_raw(self, device_id: str, point: str, raw: float | int) -> None:
        """Pin ``point`` to a raw (unscaled) value, e.g. a sentinel like 65535."""
        unit = self.units[device_id]
        unit.pinned.add(point)
        await self._put(unit, point, raw, raw=True)

    def release(self, device_id: str, point: str) -> None:
        self.units[device_id].pinned.discard(point)

    def kill(self, device_id: str) -> None:
        """The device stops answering (requests time out)."""
        self.units[device_id].alive.clear()

    def revive(self, device_id: str) -> None:
        self.units[device_id].alive.set()

    def slow(self, device_id: str, delay_s: float) -> None:
        """Answer every request ``delay_s`` late (0 restores)."""
        self.units[device_id].delay_s = delay_s

    def make_illegal(self, device_id: str, point: str) -> None:
        """Refuse the point's registers with exception 0x02 (illegal data address)."""
        unit = self.units[device_id]
        p = unit.points[point]
        unit.illegal.update((p.table, a) for a in range(p.address, p.address + p.count))


class SimField(ModbusSimBase):
    """Serves every Modbus TCP device of ``devices``; an async context manager.

    ``speedup`` runs the profiles' event timelines faster; ``update_s`` overrides how often
    values change (default: each device's interval).
    """

    def __init__(
        self,
        devices: Sequence[ResolvedDevice],
        *,
        speedup: float = 1.0,
        update_s: float | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__(speedup=speedup, update_s=update_s)
        rng = random.Random(seed)
        self.by_endpoint: dict[Endpoint, list[SimUnit]] = {}
        for d in devices:
            if isinstance(d.bus, ModbusTcpBus):
                unit = SimUnit(d, rng)
                self.units[d.id] = unit
                self.by_endpoint.setdefault((d.bus.host, d.bus.port), []).append(unit)
        self.servers: dict[Endpoint, ModbusTcpServer] = {}
        self._unit_server: dict[str, ModbusTcpServer] = {}

    async def start(self) -> None:
        quiet_pymodbus()
        for (host, port), units in self.by_endpoint.items():
            _check_unique_units(f"{host}:{port}", units)
            sims = [u.simdevice() for u in units] + [_catch_all()]
            server = ModbusTcpServer(sims, address=(host, port))
            await server.serve_forever(background=True)
            self.servers[(host, port)] = server
            for u in units:
                self._unit_server[u.id] = server
            logger.info("sim: serving %d device(s) on %s:%d (units %s)", len(units), host, port,
                        ",".join(str(u.unit) for u in units))  # fmt: skip
        await self._start_animation()

    async def stop(self) -> None:
        await self._stop_animation()
        for server in self.servers.values():
            await server.shutdown()  # type: ignore[no-untyped-call]
        self.servers.clear()

    async def _store(self, unit: SimUnit, point: ModbusPoint, words: list[int]) -> None:
        values: list[int] | list[bool] = words
        if point.table in ("coil", "discrete"):
            values = [bool(w) for w in words]
        token = _internal.set(True)
        try:
            await self._unit_server[unit.id].async_setValues(
                unit.unit, WRITE_FC[point.table], point.address, values
            )
        finally:
            _internal.reset(token)


def _check_unique_units(where: str, units: list[SimUnit]) -> None:
    ids = [u.unit for u in units]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{where}: two devices share a unit id: {sorted(ids)}")
