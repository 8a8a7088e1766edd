"""Read planner: a device's points coalesced into as few Modbus requests as possible.

Pure: no I/O, no clock. Points of one table that are contiguous or close (at most ``max_gap``
unused registers apart) share one request, up to the protocol limits (125 registers, 2000
bits per read). Reading a few unused registers is far cheaper than another round trip, above
all on a serial line where every request costs a turnaround.

When a device answers a merged request with "illegal data address" (an unmapped register in a
gap, or a point the firmware doesn't have), :meth:`ReadPlan.split` bisects that request so the
good points keep being read together and the offending point ends up alone; once a single
point's own request is refused, the point is marked bad and left out of the plan (the driver
reports it INVALID every poll and :meth:`ReadPlan.reset` gives it another chance later).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from gridwatch.ground.profiles import ModbusPoint, Table

MAX_REGISTERS = 125  # FC3/FC4 limit: 250 data bytes in a 256-byte ADU
MAX_BITS = 2000  # FC1/FC2 limit
BIT_TABLES: frozenset[str] = frozenset({"coil", "discrete"})


@dataclass(frozen=True, slots=True)
class Slice:
    """Where one point's words start inside its request's response."""

    name: str
    offset: int


@dataclass(frozen=True, slots=True)
class ReadRequest:
    table: Table
    start: int
    count: int
    slices: tuple[Slice, ...]

    @property
    def end(self) -> int:
        return self.start + self.count


@dataclass(frozen=True, slots=True)
class _Span:
    name: str
    table: Table
    start: int
    end: int


def plan_reads(
    points: Mapping[str, ModbusPoint],
    *,
    max_gap: int = 8,
    max_registers: int = MAX_REGISTERS,
    max_bits: int = MAX_BITS,
    exclude: Collection[str] = (),
) -> list[ReadRequest]:
    """Requests that read every point not in ``exclude``, ordered by table and address.

    ``max_gap`` counts unused registers; for coils and discrete inputs it is scaled by 16,
    since bits travel sixteen to a register's worth of bytes.
    """
    spans = sorted(
        (_Span(n, p.table, p.address, p.address + p.count) for n, p in points.items()
         if n not in exclude),
        key=lambda s: (s.table, s.start, s.end, s.name),
    )  # fmt: skip
    groups: list[list[_Span]] = []
    for span in spans:
        bits = span.table in BIT_TABLES
        limit, gap = (max_bits, max_gap * 16) if bits else (max_registers, max_gap)
        if groups and _fits(groups[-1], span, limit, gap):
            groups[-1].append(span)
        else:
            groups.append([span])
    return [_request(g) for g in groups]


def _fits(group: list[_Span], span: _Span, limit: int, gap: int) -> bool:
    first = group[0]
    end = max(s.end for s in group)
    return (
        span.table == first.table
        and span.start - end <= gap
        and max(end, span.end) - first.start <= limit
    )


def _request(group: list[_Span]) -> ReadRequest:
    start = group[0].start
    end = max(s.end for s in group)
    slices = tuple(Slice(s.name, s.start - start) for s in group)
    return ReadRequest(group[0].table, start, end - start, slices)


def bisect(request: ReadRequest, points: Mapping[str, ModbusPoint]) -> list[ReadRequest]:
    """Two requests covering the request's points, split between distinct addresses.

    Returns ``[]`` when the points cannot be split further (they all start at one address).
    """
    starts = sorted({request.start + s.offset for s in request.slices})
    if len(starts) < 2:
        return []
    pivot = starts[len(starts) // 2]
    low = {s.name: points[s.name] for s in request.slices if request.start + s.offset < pivot}
    high = {s.name: points[s.name] for s in request.slices if s.name not in low}
    return [_request(_spans(low)), _request(_spans(high))]


def _spans(points: Mapping[str, ModbusPoint]) -> list[_Span]:
    spans = (_Span(n, p.table, p.address, p.address + p.count) for n, p in points.items())
    return sorted(spans, key=lambda s: (s.start, s.end, s.name))


class ReadPlan:
    """One device's current requests, and the points found to be unreadable.

    Mutable but pure: the driver reports what the device refused, the plan adapts.
    """

    def __init__(
        self,
        points: Mapping[str, ModbusPoint],
        *,
        max_gap: int = 8,
        max_registers: int = MAX_REGISTERS,
        max_bits: int = MAX_BITS,
    ) -> None:
        self.points = dict(points)
        self.max_gap, self.max_registers, self.max_bits = max_gap, max_registers, max_bits
        self.bad: set[str] = set()
        self.requests = self._merged()

    def split(self, request: ReadRequest) -> list[ReadRequest]:
        """The device refused ``request`` with an illegal address: bisect it.

        Returns the requests that replace it (to be tried at once); when the request held a
        single address its points are marked bad and nothing replaces it.
        """
        halves = bisect(request, self.points)
        if not halves:
            self.bad.update(s.name for s in request.slices)
        i = self.requests.index(request)
        self.requests[i : i + 1] = halves
        return halves

    def reset(self) -> None:
        """Forget bad points and merge everything again (after a firmware update, say)."""
        self.bad.clear()
        self.requests = self._merged()

    def _merged(self) -> list[ReadRequest]:
        return plan_reads(
            self.points,
            max_gap=self.max_gap,
            max_registers=self.max_registers,
            max_bits=self.max_bits,
        )
