"""The centre's own health: what it depends on, judged ok, degraded or down with a reason in
plain words. Pure: no I/O, time is an argument (epoch ms, the centre's clock).

What is judged, and who knows it:

- **broker sessions**: each bridge lane (``telemetry``, ``events``) connected or not, since when;
  the registry's own sessions (downlink, platform publisher) report as before (``HEALTH_PARTS``);
- **database**: the registry pings its own; a bridge says how its last reads and writes went;
- **time-series store**: as the bridge's writes met it: last success, consecutive failures,
  the last error's kind;
- **ingest lag**: how long the oldest message a bridge has received but not yet committed has
  waited (receive to commit; what waits in the broker before that is not seen by anyone here).

A bridge tells this as a ``BridgeReport``. In ``gridwatch central run`` the registry reads it
from the bridge in its own process, live. A bridge in another process (``gridwatch bridge
run``) writes it into the registry database every few seconds (a heartbeat row, see
``health/store.py``): a registry elsewhere knows it as of that row, and knows nothing of it
while the database is down (it then says "database down", which is the root cause the bridge
meets too). A heartbeat older than ``CentrePolicy.report_stale_ms`` is itself a finding: the
bridge stopped, hangs, or cannot reach the database.

``stall`` sums up what matters for device health: since when the centre has not been ingesting
(a store or a broker session down, a bridge not heard from, or a lag above ``lag_degraded_ms``),
and why. A device whose
data stopped after that is not "silent": the centre cannot know (``core.assess_device``).
"""

from __future__ import annotations

import enum
import socket
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import BaseModel, Field


class Level(enum.StrEnum):
    OK = "ok"
    DEGRADED = "degraded"
    """Working, but behind or erring: a write that failed once, a lag above the bound."""
    DOWN = "down"
    """Not working: writes keep failing, a session is lost, a bridge is not heard from."""


_RANK = {Level.OK: 0, Level.DEGRADED: 1, Level.DOWN: 2}


def worst(levels: Iterable[Level]) -> Level:
    return max(levels, key=_RANK.__getitem__, default=Level.OK)


class LinkState(BaseModel):
    """A store (the database, the time-series store) as one process's calls met it."""

    ok_at: int | None = Field(default=None, description="Last success (epoch ms).")
    failures: int = Field(default=0, description="Consecutive failures since then.")
    failing_since: int | None = Field(default=None, description="First of those (epoch ms).")
    error: str = Field(default="", description="The last error's kind, in plain words (its "
                       "text, with addresses, is in the process's log).")  # fmt: skip


class Link:
    """Keeps a ``LinkState`` up to date as calls succeed and fail."""

    def __init__(self) -> None:
        self.state = LinkState()

    def ok(self, now: int) -> None:
        self.state = LinkState(ok_at=now)

    def failed(self, now: int, exc: BaseException) -> None:
        s = self.state
        self.state = LinkState(ok_at=s.ok_at, failures=s.failures + 1,
                               failing_since=s.failing_since or now, error=error_kind(exc))  # fmt: skip


class LaneState(BaseModel):
    connected: bool
    since: int | None = Field(description="Last change between up and down (epoch ms); null: "
                              "not tried yet.")  # fmt: skip


class BridgeReport(BaseModel):
    """What one bridge says about the parts it depends on."""

    bridge: str = Field(description="The bridge's id (``--bridge-id``).")
    at: int = Field(description="When this was taken (epoch ms).")
    lanes: dict[str, LaneState]
    store: str = Field(description="Which time-series store: influx (InfluxDB or "
                       "VictoriaMetrics) or sqlite (the embedded history).")  # fmt: skip
    sink: LinkState
    registry: LinkState
    oldest_uncommitted: int | None = Field(
        default=None, description="When the oldest message received but not yet committed to "
        "the registry was received (epoch ms); null: none waits.")  # fmt: skip
    commit_delay_ms: int | None = Field(
        default=None, description="Receive to commit of the last committed step."
    )
    share_group: str | None = Field(
        default=None, description="The MQTT share group it ingests in (``--share-group``); "
        "null: it takes every message itself (and a heartbeat of an older bridge).")  # fmt: skip


@dataclass(frozen=True)
class CentrePolicy:
    down_after_failures: int = 3
    """Consecutive failed calls that make a store down; fewer are degraded (a hiccup the
    backoff retries in well under a second)."""
    lag_degraded_ms: int = 5_000
    """Oldest uncommitted message older than this: ingest is behind. Normal running commits
    within the registry window (1 s) plus a write."""
    report_stale_ms: int = 15_000
    """A heartbeat older than this (five beats): the bridge is not reporting."""


@dataclass(frozen=True)
class Dependency:
    name: str
    """What is depended on: broker, database, time-series store, ingest lag, bridge."""
    part: str
    """Whose view it is: ``registry``, ``bridge <id>``, a registry session's name."""
    status: Level
    reason: str
    since: int | None = None
    stalls: bool = False
    """It keeps readings from reaching the registry: a store failing (from its first failed call:
    the bridge's step waits for it), a session down, a bridge not heard from, a lag above the
    bound."""
    detail: dict[str, Any] = field(default_factory=dict)
    """The facts judged, for a machine: a store's ``LinkState``, each lane's state, the lag."""

    @property
    def label(self) -> str:
        return self.name if self.part == "registry" else f"{self.part}: {self.name}"


def clock(ms: int) -> str:
    """A time of day, UTC, as the logs and the CLI print it."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(ms / 1000))


def judge_database(state: LinkState, now: int, p: CentrePolicy | None = None) -> Dependency:
    """The registry's own database, as its pings met it."""
    return _link("database", "registry", "database", state, now, p or CentrePolicy(), False)


def judge_bridge(
    r: BridgeReport, now: int, p: CentrePolicy | None = None, live: bool = True
) -> list[Dependency]:
    """A bridge's dependencies; from a heartbeat (``live`` False) older than the policy allows,
    the one finding that it is not heard from."""
    p = p or CentrePolicy()
    part = f"bridge {r.bridge}"
    if not live and now - r.at > p.report_stale_ms:
        why = (f"no report since {clock(r.at)} ({(now - r.at) / 1000:.0f} s): stopped, hung, "
               "or cannot reach the database")  # fmt: skip
        return [Dependency("bridge", part, Level.DOWN, why, r.at, stalls=True)]
    store = "time-series store" if r.store == "influx" else "telemetry history"
    return [
        _lanes(part, r.lanes),
        _link(store, part, store, r.sink, now, p, True),
        _link("database", part, "registry database", r.registry, now, p, True),
        _lag(part, r, now, p),
    ]


def judge_bridges(
    reports: Sequence[tuple[BridgeReport, bool]], now: int, p: CentrePolicy | None = None
) -> list[Dependency]:
    """Every bridge's dependencies (``judge_bridge``; each report with whether it is ``live``),
    judged by share group: a group ingests while one member of it does, as the broker gives the
    whole stream to the members it can reach. A member that does not (stopped, not heard from,
    its session lost) is then a degraded part, named, not a centre that is not ingesting: its
    findings do not stall device health. A bridge without a group is a group of its own."""
    p = p or CentrePolicy()
    judged = [(r, judge_bridge(r, now, p, live)) for r, live in reports]
    working: dict[str, list[str]] = {}
    for r, deps in judged:
        if r.share_group is not None and not any(d.stalls for d in deps):
            working.setdefault(r.share_group, []).append(r.bridge)
    out: list[Dependency] = []
    for r, deps in judged:
        others = working.get(r.share_group or "", []) if r.share_group is not None else []
        if not others or r.bridge in others:
            out += deps
            continue
        names = ", ".join(f"bridge {b}" for b in others)
        cover = f"; share group {r.share_group} ingests without it ({names})"
        out += [replace(d, status=Level.DEGRADED, reason=d.reason + cover, stalls=False)
                if d.stalls else d for d in deps]  # fmt: skip
    return out


def _link(
    name: str, part: str, what: str, s: LinkState, now: int, p: CentrePolicy, blocks: bool
) -> Dependency:
    facts = s.model_dump()
    if not s.failures:
        last = "no call yet" if s.ok_at is None else f"last success {clock(s.ok_at)}"
        return Dependency(name, part, Level.OK, last, detail=facts)
    since = s.failing_since or now
    level = Level.DOWN if s.failures >= p.down_after_failures else Level.DEGRADED
    state = "down" if level is Level.DOWN else "failing"
    tries = "1 failed call" if s.failures == 1 else f"{s.failures} failed calls"
    why = f"{what} {state} since {clock(since)} ({tries}, {s.error or 'error'}; retrying)"
    # a bridge's step waits for a failing store from its first failure: its devices' data stops
    # then, not after the third, so from then on a quiet device cannot be told from the centre
    return Dependency(name, part, level, why, since, blocks, facts)


def _lanes(part: str, lanes: dict[str, LaneState]) -> Dependency:
    facts = {n: s.model_dump() for n, s in sorted(lanes.items())}
    down = {n: s for n, s in sorted(lanes.items()) if not s.connected and s.since is not None}
    starting = [n for n, s in sorted(lanes.items()) if not s.connected and s.since is None]
    if down:
        since = min(s.since for s in down.values() if s.since is not None)
        names = ", ".join(down)
        why = f"broker session{'s' if len(down) > 1 else ''} {names} lost since {clock(since)}"
        return Dependency("broker", part, Level.DOWN, why, since, True, facts)
    if starting:  # as the registry's own sessions: not failing before a first attempt failed
        return Dependency("broker", part, Level.OK, f"connecting: {', '.join(starting)}",
                          detail=facts)  # fmt: skip
    up = ", ".join(
        f"{n} since {clock(s.since)}" if s.since else n for n, s in sorted(lanes.items())
    )
    return Dependency("broker", part, Level.OK, f"connected: {up}", detail=facts)


def _lag(part: str, r: BridgeReport, now: int, p: CentrePolicy) -> Dependency:
    facts = {"oldest_uncommitted": r.oldest_uncommitted, "commit_delay_ms": r.commit_delay_ms}
    if r.oldest_uncommitted is None:
        return Dependency("ingest lag", part, Level.OK, "nothing waits to be committed",
                          detail=facts)  # fmt: skip
    age = max(0, now - r.oldest_uncommitted)
    if age <= p.lag_degraded_ms:
        return Dependency("ingest lag", part, Level.OK, f"{age / 1000:.1f} s", detail=facts)
    why = f"behind: a message received at {clock(r.oldest_uncommitted)} ({age / 1000:.0f} s ago) " \
          "is not committed yet"  # fmt: skip
    return Dependency("ingest lag", part, Level.DEGRADED, why, r.oldest_uncommitted, True, facts)


@dataclass(frozen=True)
class Stall:
    """The centre has not been ingesting since ``since``, because of ``why``."""

    since: int
    why: str


def stall(deps: Sequence[Dependency], now: int) -> Stall | None:
    """The earliest dependency that keeps readings from the registry, if any. A lag is the
    consequence of the others: named only when nothing else explains it."""
    blocking = [d for d in deps if d.stalls]
    if not blocking:
        return None
    causes = [d for d in blocking if d.name != "ingest lag"] or blocking
    first = min(causes, key=lambda d: (d.since if d.since is not None else now, d.label))
    since = min(d.since if d.since is not None else now for d in blocking)
    return Stall(since, first.reason)


def error_kind(exc: BaseException) -> str:
    """An error in plain words, from its type (and its causes'), never its text: a public
    health check shows it, and a text may carry an address or a password."""
    seen: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and len(seen) < 10:
        seen.append(e)
        e = e.__cause__ or e.__context__
    for e in reversed(seen):  # the root cause first
        for kind, words in _KINDS:
            if isinstance(e, kind):
                return words
    return type(seen[-1]).__name__


_KINDS: tuple[tuple[type[BaseException], str], ...] = (
    (ConnectionRefusedError, "connection refused"),
    (ConnectionResetError, "connection reset"),
    (socket.gaierror, "host name not found"),
    (TimeoutError, "timed out"),
    (ConnectionError, "connection lost"),
    (OSError, "network error"),
)
