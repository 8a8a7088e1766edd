"""Read planner: tables of (points, options) -> requests (table, start, count, slices)."""

from __future__ import annotations

from typing import Any

import pytest

from drivers.planner import ReadPlan, ReadRequest, Slice, bisect, plan_reads
from gridwatch.ground.profiles import ModbusPoint


def p(address: int, data_type: str = "uint16", table: str = "holding", **kw: Any) -> ModbusPoint:
    if data_type == "bit":
        kw.setdefault("bit", 0)
    return ModbusPoint(table=table, address=address, data_type=data_type, **kw)


def shape(reqs: list[ReadRequest]) -> list[tuple[str, int, int, list[tuple[str, int]]]]:
    return [(r.table, r.start, r.count, [(s.name, s.offset) for s in r.slices]) for r in reqs]


Points = dict[str, ModbusPoint]
PLAN_TABLE: list[tuple[str, Points, dict[str, int], list[tuple[str, int, int, list[Any]]]]] = [
    ("contiguous points merge", {"a": p(0), "b": p(1), "c": p(2, "uint32")}, {},
     [("holding", 0, 4, [("a", 0), ("b", 1), ("c", 2)])]),
    ("a gap within max_gap merges", {"a": p(0), "b": p(9)}, {},
     [("holding", 0, 10, [("a", 0), ("b", 9)])]),
    ("a gap beyond max_gap splits", {"a": p(0), "b": p(10)}, {},
     [("holding", 0, 1, [("a", 0)]), ("holding", 10, 1, [("b", 0)])]),
    ("max_gap 0 merges only touching points", {"a": p(0), "b": p(1), "c": p(3)}, {"max_gap": 0},
     [("holding", 0, 2, [("a", 0), ("b", 1)]), ("holding", 3, 1, [("c", 0)])]),
    ("tables never mix", {"h": p(0), "i": p(0, table="input")}, {},
     [("holding", 0, 1, [("h", 0)]), ("input", 0, 1, [("i", 0)])]),
    ("points sharing a register share the read",
     {"alarm": p(2, "bit", table="input", bit=0), "fault": p(2, "bit", table="input", bit=1),
      "obs": p(0, "float32", table="input")}, {},
     [("input", 0, 3, [("obs", 0), ("alarm", 2), ("fault", 2)])]),
    ("unordered input comes out sorted", {"z": p(5), "y": p(0)}, {},
     [("holding", 0, 6, [("y", 0), ("z", 5)])]),
    ("the register limit splits a long run", {"a": p(0), "b": p(100, "float64"), "c": p(122, "uint64")},
     {"max_gap": 200},
     [("holding", 0, 104, [("a", 0), ("b", 100)]), ("holding", 122, 4, [("c", 0)])]),
    ("a configured smaller limit is honoured", {"a": p(0), "b": p(4)}, {"max_registers": 4},
     [("holding", 0, 1, [("a", 0)]), ("holding", 4, 1, [("b", 0)])]),
    ("coils merge with a gap scaled to bits", {"c1": p(0, "bool", "coil"), "c2": p(100, "bool", "coil")},
     {}, [("coil", 0, 101, [("c1", 0), ("c2", 100)])]),
    ("coils beyond 2000 bits split", {"c1": p(0, "bool", "coil"), "c2": p(2000, "bool", "coil")},
     {"max_gap": 1000},
     [("coil", 0, 1, [("c1", 0)]), ("coil", 2000, 1, [("c2", 0)])]),
    ("a string counts its length", {"name": p(10, "string", length=8), "v": p(18)}, {},
     [("holding", 10, 9, [("name", 0), ("v", 8)])]),
    ("no points, no requests", {}, {}, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("why", "points", "opts", "expected"), PLAN_TABLE, ids=[r[0] for r in PLAN_TABLE]
)
def test_plan_reads(why: str, points: Points, opts: dict[str, Any], expected: Any) -> None:
    assert shape(plan_reads(points, **opts)) == expected


def test_excluded_points_are_not_read() -> None:
    points = {"a": p(0), "b": p(1), "c": p(2)}
    assert shape(plan_reads(points, exclude={"b"})) == [("holding", 0, 3, [("a", 0), ("c", 2)])]


def test_shipped_water_level_profile_is_one_read() -> None:
    points = {"level": p(0, scale=0.001), "loop_current": p(1), "counter": p(2, "uint32")}
    assert len(plan_reads(points)) == 1


BISECT_TABLE: list[tuple[str, Points, list[list[str]]]] = [
    ("two points", {"a": p(0), "b": p(5)}, [["a"], ["b"]]),
    ("four points split in the middle", {"a": p(0), "b": p(1), "c": p(2), "d": p(3)},
     [["a", "b"], ["c", "d"]]),
    ("points of one register stay together",
     {"x": p(0), "b0": p(4, "bit", bit=0), "b1": p(4, "bit", bit=1)}, [["x"], ["b0", "b1"]]),
    ("a single address cannot split", {"b0": p(4, "bit", bit=0), "b1": p(4, "bit", bit=1)}, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("why", "points", "expected"), BISECT_TABLE, ids=[r[0] for r in BISECT_TABLE]
)
def test_bisect(why: str, points: Points, expected: list[list[str]]) -> None:
    (req,) = plan_reads(points)
    halves = bisect(req, points)
    assert [[s.name for s in h.slices] for h in halves] == expected
    for h in halves:  # each half is a valid request for its own points
        for s in h.slices:
            assert points[s.name].address == h.start + s.offset


def _refuse(plan: ReadPlan, illegal: int) -> None:
    """Run the driver's split loop against a device with one illegal register."""
    pending = list(plan.requests)
    while pending:
        req = pending.pop(0)
        if req.start <= illegal < req.end:
            pending[:0] = plan.split(req)


def test_split_isolates_the_offending_point() -> None:
    points = {n: p(i) for i, n in enumerate("abcdefgh")}
    plan = ReadPlan(points)
    _refuse(plan, illegal=5)
    assert plan.bad == {"f"}
    read = {s.name for r in plan.requests for s in r.slices}
    assert read == set("abcdegh")
    assert len(plan.requests) <= 4  # the good points stay merged, not one request each
    plan.reset()
    assert plan.bad == set()
    assert shape(plan.requests) == [("holding", 0, 8, [(n, i) for i, n in enumerate("abcdefgh")])]


def test_split_on_an_unmapped_gap_keeps_every_point() -> None:
    plan = ReadPlan({"a": p(0), "b": p(6)})
    _refuse(plan, illegal=3)
    assert plan.bad == set()
    assert plan.requests == [
        ReadRequest("holding", 0, 1, (Slice("a", 0),)),
        ReadRequest("holding", 6, 1, (Slice("b", 0),)),
    ]
