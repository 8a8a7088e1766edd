"""Grouping the alerts of one incident, so the platform dispatches one incident, not five.

The pure core: rules are data, time is an argument. A rule says which categories it covers, which
fields two alerts must share (the same site's grid cell and category; or the same device, for a
camera that detects the same thing again and again) and how close in time they must be raised.
A new alert joins the newest incident that a rule matches and that is still waiting for people;
otherwise it starts an incident of its own.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Field = str  # one of Candidate's attribute names: district, grid, category, gateway, device


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    categories: tuple[str, ...]
    """Catalogue codes, shell-style patterns allowed (``FIRE-*``)."""
    same: tuple[Field, ...]
    """Fields two alerts must share."""
    window_ms: int
    """How long after an incident's latest alert another one still joins it."""

    def covers(self, category: str) -> bool:
        return any(fnmatch.fnmatchcase(category, pat) for pat in self.categories)


@dataclass(frozen=True, slots=True)
class Candidate:
    """An alert as correlation sees it."""

    alert_id: str
    raised_at: int
    district: str
    grid: str
    category: str
    gateway: str
    device: str
    incident_id: str | None = None
    waiting: bool = True
    """Still open or acknowledged: a resolved incident is not reopened by a late alert."""


DEFAULT_RULES: tuple[Rule, ...] = (
    # several detectors in one grid cell seeing the same thing: one fire, one flood
    Rule("same-cell", ("*",), ("district", "grid", "category"), 60_000),
    # a camera (or any device) repeating its detection: one obstruction, not one per frame
    Rule("same-device", ("*",), ("gateway", "device", "category"), 10 * 60_000),
)


def _key(alert: Candidate, fields: Sequence[Field]) -> tuple[str, ...]:
    return tuple(str(getattr(alert, f)) for f in fields)


def matches(rule: Rule, new: Candidate, old: Candidate) -> bool:
    if not (rule.covers(new.category) and old.waiting and old.incident_id):
        return False
    if any(not getattr(new, f) for f in rule.same):  # an empty grid groups nothing
        return False
    if _key(new, rule.same) != _key(old, rule.same):
        return False
    return 0 <= new.raised_at - old.raised_at <= rule.window_ms


def incident_for(new: Candidate, recent: Iterable[Candidate], rules: Sequence[Rule]) -> str | None:
    """The incident ``new`` joins (the newest matching one), or None for a new incident."""
    best: Candidate | None = None
    for old in recent:
        if old.alert_id == new.alert_id:
            continue
        if any(matches(rule, new, old) for rule in rules) and (
            best is None or old.raised_at > best.raised_at
        ):
            best = old
    return None if best is None else best.incident_id


def lookback_ms(rules: Sequence[Rule]) -> int:
    """How far back the store must look for candidates."""
    return max((r.window_ms for r in rules), default=0)
