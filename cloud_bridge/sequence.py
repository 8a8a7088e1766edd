"""Per-gateway, per-stream sequence tracking: notices gaps, and their repair. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass

HOLES_MAX = 100
"""Open gaps remembered per stream, to recognise their repair; the oldest are forgotten first
(a repair of a forgotten gap is then taken as a plain replay, and stays counted missing)."""


class Seq(enum.Enum):
    FIRST = "first"  # first message of the stream since this bridge started
    NEXT = "next"
    GAP = "gap"
    RESTART = "restart"  # a new gateway session restarted the numbering
    REPLAY = "replay"  # not newer than the last one seen (redelivery under another id, reorder)
    FILLED = "filled"  # a number an earlier gap counted missing: the gateway sent it again


@dataclass(frozen=True, slots=True)
class Observation:
    kind: Seq
    missing: int = 0
    first: int = 0
    """With GAP: the first missing number (the run is ``first`` .. ``first + missing - 1``)."""


class GapTracker:
    """Remembers the last (session, seq) of each (gateway, stream), and its open gaps.

    Gaps are counted when a stream skips numbers, whether or not the session changed (a gateway
    whose outbox keeps numbering across reconnects). A smaller number under a new session is a
    restart, not a gap. A number that fills an open gap is FILLED: the gateway answered the
    centre's Repair (or resent it after its ack timeout). Under a shared subscription each
    bridge sees only part of every stream: there the members audit the registry together
    (``device_registry.ingest.seqaudit``).
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[int, int]] = {}
        self._holes: dict[tuple[str, str], list[tuple[int, int]]] = {}

    def observe(self, gateway: str, stream: str, session: int, seq: int) -> Observation:
        key = (gateway, stream)
        last = self._last.get(key)
        if last is None:
            self._last[key] = (session, seq)
            return Observation(Seq.FIRST)
        last_session, last_seq = last
        if seq <= last_seq:
            if session > last_session:
                self._last[key] = (session, seq)
                self._holes.pop(key, None)  # a new numbering: the old one's gaps are moot
                return Observation(Seq.RESTART)
            return Observation(Seq.FILLED if self._fill(key, seq) else Seq.REPLAY)
        self._last[key] = (session, seq)
        if seq == last_seq + 1:
            return Observation(Seq.NEXT)
        holes = self._holes.setdefault(key, [])
        holes.append((last_seq + 1, seq - 1))
        del holes[:-HOLES_MAX]
        return Observation(Seq.GAP, seq - last_seq - 1, last_seq + 1)

    def _fill(self, key: tuple[str, str], seq: int) -> bool:
        holes = self._holes.get(key, [])
        for i, (first, last) in enumerate(holes):
            if first <= seq <= last:
                rest = [(a, b) for a, b in ((first, seq - 1), (seq + 1, last)) if a <= b]
                holes[i : i + 1] = rest
                return True
        return False
