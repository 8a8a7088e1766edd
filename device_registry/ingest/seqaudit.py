"""The gap audit across a shared subscription. Pure.

Every member of a shared subscription sees part of each stream, so no member can notice a gap
alone (``cloud_bridge.sequence.GapTracker`` does it for a lone bridge). Each message's (gateway,
stream, session, seq) goes into the registry with its id; every few seconds a member audits the
numbers that have settled (received long enough ago that the other members have committed
theirs), and claims the audited range with a conditional update, so exactly one member reports
each gap however many members there are (``RegistryStore.audit_sequences``).

A number reported missing may come later all the same: the turn of a member that was stopped,
delivered when it is back, or the gateway's answer to the Repair. The member that reported the
gap keeps its holes and looks for them in the registry at every audit (``fill``); what arrived is
withdrawn from the count (``RegistryStore.withdraw_filled``) and said at INFO.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class AuditState:
    """Where the audit of one (gateway, stream) stands."""

    session: int  # the numbering being followed: a restart (a lost outbox) begins a new one
    through: int  # every number up to this one has been audited


@dataclass(frozen=True, slots=True)
class Span:
    """The lowest and highest settled number seen in one session of a stream."""

    session: int
    lo: int
    hi: int


@dataclass(frozen=True, slots=True)
class AuditStep:
    """Count the distinct numbers in (lo, hi] seen in sessions >= ``session``; the rest are
    missing. Store ``state`` when the claim succeeds."""

    lo: int
    hi: int
    session: int
    state: AuditState

    @property
    def expected(self) -> int:
        return self.hi - self.lo


def plan_audit(state: AuditState | None, spans: list[Span]) -> AuditStep | None:
    """The next range to audit, or None when nothing new has settled.

    A stream met for the first time is audited from its first settled number (what came before
    was never this registry's to miss). Numbering carries on across sessions, so a newer session
    that starts at or below the audited number is a restart: its own numbering is audited from
    its first number, and the old numbering's unaudited tail is left alone.
    """
    if not spans:
        return None
    spans = sorted(spans, key=lambda s: (s.session, s.lo))
    if state is None:
        state = AuditState(spans[0].session, spans[0].lo - 1)
    for span in spans:
        if span.session > state.session and span.lo <= state.through:
            state = AuditState(span.session, span.lo - 1)
    hi = max((s.hi for s in spans if s.session >= state.session), default=state.through)
    if hi <= state.through:
        return None
    return AuditStep(state.through, hi, state.session, AuditState(state.session, hi))


@dataclass(frozen=True, slots=True)
class Gap:
    """Numbers of a stream no bridge received, as (first, last) runs within (after, through]."""

    gateway: str
    stream: str
    after: int
    through: int
    holes: tuple[tuple[int, int], ...]
    session: int = 0
    """The numbering audited: numbers seen in this session or a later one count."""

    @property
    def missing(self) -> int:
        return sum(last - first + 1 for first, last in self.holes)


def holes(after: int, through: int, seen: list[int]) -> tuple[tuple[int, int], ...]:
    """The runs of numbers in (after, through] that are not in ``seen``."""
    runs: list[tuple[int, int]] = []
    expect = after + 1
    for n in sorted(set(seen)):
        if n < expect:
            continue
        if n > expect:
            runs.append((expect, n - 1))
        expect = n + 1
    if expect <= through:
        runs.append((expect, through))
    return tuple(runs)


def fill(
    runs: tuple[tuple[int, int], ...], arrived: list[int]
) -> tuple[tuple[tuple[int, int], ...], list[int]]:
    """``runs`` (first, last) without the numbers in ``arrived``, and those numbers (sorted,
    once each): the holes still open, and what filled the others."""
    inside = sorted({n for n in arrived if any(a <= n <= b for a, b in runs)})
    left: list[tuple[int, int]] = []
    for first, last in runs:
        expect = first
        for n in (n for n in inside if first <= n <= last):
            if n > expect:
                left.append((expect, n - 1))
            expect = n + 1
        if expect <= last:
            left.append((expect, last))
    return tuple(left), inside


def closed(runs: tuple[tuple[int, int], ...], left: tuple[tuple[int, int], ...]) -> int:
    """How many of ``runs`` have no number in ``left``: gaps filled whole, no longer gaps."""
    return sum(1 for a, b in runs if not any(x <= b and a <= y for x, y in left))
