"""The sequence audit across a shared subscription: which range to count, table by table."""

from __future__ import annotations

import pytest

from device_registry.ingest.seqaudit import AuditState, Span, closed, fill, holes, plan_audit

S = AuditState

# (stored state, settled spans, expected (lo, hi, session) to count or None, new state)
AUDIT_TABLE: list[tuple[str, AuditState | None, list[Span], tuple[int, int, int] | None]] = [
    ("nothing settled", S(1, 10), [], None),
    ("first sight of a stream starts at its first number", None, [Span(1, 5, 9)], (4, 9, 1)),
    ("more of the same session", S(1, 9), [Span(1, 10, 20)], (9, 20, 1)),
    ("numbering carries across a reconnect", S(1, 9), [Span(1, 10, 12), Span(2, 13, 20)],
     (9, 20, 1)),
    ("a hole between sessions is still counted", S(1, 9), [Span(2, 15, 20)], (9, 20, 1)),
    ("nothing above what was audited", S(1, 20), [Span(1, 15, 20)], None),
    ("a restart (lost outbox) follows the new numbering", S(1, 500), [Span(2, 1, 30)],
     (0, 30, 2)),
    ("the old numbering's late tail beside a restart", S(1, 500),
     [Span(1, 501, 510), Span(2, 1, 30)], (0, 30, 2)),
    ("an old session's stragglers after a restart are ignored", S(2, 30), [Span(1, 505, 510)],
     None),
]  # fmt: skip


@pytest.mark.parametrize(("state", "spans", "expected"), [t[1:] for t in AUDIT_TABLE],
                         ids=[t[0] for t in AUDIT_TABLE])  # fmt: skip
def test_plan_audit(
    state: AuditState | None, spans: list[Span], expected: tuple[int, int, int] | None
) -> None:
    step = plan_audit(state, spans)
    if expected is None:
        assert step is None
        return
    assert step is not None
    assert (step.lo, step.hi, step.session) == expected
    assert step.state == AuditState(step.session, step.hi)


@pytest.mark.parametrize(
    ("after", "through", "seen", "expected"),
    [
        (0, 5, [1, 2, 3, 4, 5], ()),
        (0, 10, [1, 3, 5, 9, 2, 6, 10], ((4, 4), (7, 8))),
        (10, 12, [12], ((11, 11),)),
        (4, 9, [2, 5, 5, 9], ((6, 8),)),  # below the range and repeats change nothing
        (0, 3, [], ((1, 3),)),
    ],
)
def test_holes(after: int, through: int, seen: list[int], expected: tuple[tuple[int, int]]) -> None:
    assert holes(after, through, seen) == expected


# (holes reported, numbers seen in the registry since, holes still open, numbers that filled)
FILL: list[
    tuple[tuple[tuple[int, int], ...], list[int], tuple[tuple[int, int], ...], list[int]]
] = [
    (((5, 5),), [5], (), [5]),  # the one number came
    (((5, 9),), [7], ((5, 6), (8, 9)), [7]),  # one in the middle splits the run
    (((5, 9),), [5, 9], ((6, 8),), [5, 9]),  # both ends
    (((5, 9), (12, 12)), [4, 10, 11, 13], ((5, 9), (12, 12)), []),  # around, not in: nothing
    (((5, 9), (12, 12)), [12, 12, 6], ((5, 5), (7, 9)), [6, 12]),  # repeats count once
    (((1, 3),), [3, 2, 1], (), [1, 2, 3]),  # all of it, in any order
    (((1, 3),), [], ((1, 3),), []),
]


@pytest.mark.parametrize(("runs", "arrived", "left", "filled"), FILL)
def test_fill(
    runs: tuple[tuple[int, int], ...], arrived: list[int],
    left: tuple[tuple[int, int], ...], filled: list[int],
) -> None:  # fmt: skip
    assert fill(runs, arrived) == (left, filled)


@pytest.mark.parametrize(
    ("runs", "left", "whole"),
    [
        (((5, 5),), (), 1),
        (((5, 9), (12, 12)), ((5, 6), (8, 9)), 1),  # split, still a gap; the other closed
        (((5, 9),), ((9, 9),), 0),
        (((1, 2), (4, 4), (6, 8)), ((7, 7),), 2),
        ((), (), 0),
    ],
)
def test_closed(
    runs: tuple[tuple[int, int], ...], left: tuple[tuple[int, int], ...], whole: int
) -> None:
    assert closed(runs, left) == whole
