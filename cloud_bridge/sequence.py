"""Per-gateway, per-stream sequence tracking: notices gaps. Pure."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Seq(enum.Enum):
    FIRST = "first"  # first message of the stream since this bridge started
    NEXT = "next"
    GAP = "gap"
    RESTART = "restart"  # a new gateway session restarted the numbering
    REPLAY = "replay"  # not newer than the last one seen (redelivery under another id, reorder)


@dataclass(frozen=True, slots=True)
class Observation:
    kind: Seq
    missing: int = 0


class GapTracker:
    """Remembers the last (session, seq) of each (gateway, stream).

    Gaps are counted when a stream skips numbers, whether or not the session changed (a gateway
    whose outbox keeps numbering across reconnects). A smaller number under a new session is a
    restart, not a gap. Under a shared subscription each bridge sees only part of every stream:
    there the members audit the registry together (``device_registry.ingest.seqaudit``).
    """

    def __init__(self) -> None:
        self._last: dict[tuple[str, str], tuple[int, int]] = {}

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
                return Observation(Seq.RESTART)
            return Observation(Seq.REPLAY)
        self._last[key] = (session, seq)
        if seq == last_seq + 1:
            return Observation(Seq.NEXT)
        return Observation(Seq.GAP, seq - last_seq - 1)
