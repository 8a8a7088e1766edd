"""An alert's lifecycle at the centre: the pure core (no I/O, time is an argument).

The edge says what the device sees (raised, updated, cleared); the centre adds what people do::

    open --ack--> acknowledged --resolve--> resolved --close--> closed
      |               |
      +---- device clears ----> cleared --close / resolve--> ...

An operator may resolve an open alert without acknowledging it first (the fix was quick), and
close a cleared one (the condition went away by itself). Every accepted step becomes a
``Transition`` the store persists: who did what, when, with a note.

Nobody may resolve or close an alert while its sensor still reports the condition
(``StillActive``): a closed alert leaves every list, and a flood that is still there would then be
shown by nothing. Such an alert can be acknowledged; it becomes ``cleared`` when the device says
the condition is gone, and can be resolved or closed from there.

Time limits come from the event catalogue (the city base list with the alert's district layer on
top); an alert still waiting for people (open or acknowledged) past its limit is overdue, and is
escalated once. A drill scales every limit down (``due_at``'s ``scale``) so that escalation can
be rehearsed in minutes; the catalogue's own minutes are still what messages report.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from gridwatch.ground.catalogue import DEFAULT_AREA_CLASS, Catalogue


class Stage(enum.StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"
    CLOSED = "closed"
    CLEARED = "cleared"


class Action(enum.StrEnum):
    ACK = "ack"
    RESOLVE = "resolve"
    CLOSE = "close"
    DEVICE_CLEAR = "device_clear"


DEVICE = "device"
"""The actor of a transition the device caused."""

# (stage, action) -> next stage; a pair not in the table is refused
TRANSITIONS: dict[tuple[Stage, Action], Stage] = {
    (Stage.OPEN, Action.ACK): Stage.ACKNOWLEDGED,
    (Stage.OPEN, Action.RESOLVE): Stage.RESOLVED,
    (Stage.OPEN, Action.DEVICE_CLEAR): Stage.CLEARED,
    (Stage.ACKNOWLEDGED, Action.RESOLVE): Stage.RESOLVED,
    (Stage.ACKNOWLEDGED, Action.DEVICE_CLEAR): Stage.CLEARED,
    (Stage.CLEARED, Action.RESOLVE): Stage.RESOLVED,
    (Stage.CLEARED, Action.CLOSE): Stage.CLOSED,
    (Stage.RESOLVED, Action.CLOSE): Stage.CLOSED,
}

WAITING = frozenset({Stage.OPEN, Stage.ACKNOWLEDGED})
"""Stages in which the time limit runs: somebody still has to act."""


class Refused(ValueError):
    """An action that the alert's stage does not allow (an API 409)."""

    def __init__(self, stage: Stage, action: Action, message: str = "") -> None:
        super().__init__(message or f"cannot {action.value} an alert that is {stage.value}")
        self.stage = stage
        self.action = action


ENDING = frozenset({Action.RESOLVE, Action.CLOSE})
"""Actions that take an alert off the operators' lists: refused while the condition lasts."""


class StillActive(Refused):
    """Resolve or close of an alert whose sensor still reports the condition (an API 409)."""

    def __init__(self, stage: Stage, action: Action, condition: str) -> None:
        verb = {Action.RESOLVE: "resolved", Action.CLOSE: "closed"}[action]
        super().__init__(stage, action, (
            f"this alert cannot be {verb} yet: the sensor still reports {condition}. "
            "It can be acknowledged now; once the device reports the condition gone, the alert "
            f"shows as cleared and can be {verb}; if the sensor is broken or gone, "
            f"{action.value} with override and say why in the note."
        ))  # fmt: skip
        self.condition = condition


SILENT_MS = 24 * 3_600_000
"""A sensor without a reading this long is taken as gone: its alert may be resolved and closed."""

OVERRIDE_NOTE_MIN = 15
"""An override's note says why in words, not "ok": at least this many characters."""


class NoteRequired(ValueError):
    """An override without a note that says why (an API 422)."""


def override_note_problem(note: str) -> str | None:
    """Why ``note`` cannot carry an override, in words; None when it can."""
    given = len(note.strip())
    if given >= OVERRIDE_NOTE_MIN:
        return None
    return (f"an override needs a note of at least {OVERRIDE_NOTE_MIN} characters saying why "
            f"the sensor is not to be believed (e.g. 'detector destroyed by the water'); "
            f"{'none was given' if not given else f'{given} given'}")  # fmt: skip


def sensor_gone(retired: bool, last_reading: int | None, now: int) -> str | None:
    """Why the sensor counts as gone, in words, or None while it may still report.
    ``last_reading``: epoch ms of its newest reading or alert update (None: never heard)."""
    if retired:
        return "its device is retired"
    if last_reading is not None and now - last_reading > SILENT_MS:
        return f"no reading for {(now - last_reading) // 3_600_000} h"
    return None


@dataclass(frozen=True, slots=True)
class Transition:
    """One accepted step: the store persists it, the subscribers are told."""

    before: Stage
    after: Stage
    action: Action
    actor: str
    note: str
    at: int
    override: bool = False
    """A person ended the alert against a sensor that still reported its condition."""
    sensor: str = ""
    """What the sensor last reported and why the step went against it ("" when it did not)."""


def step(
    stage: Stage, action: Action, actor: str, at: int, note: str = "", active: str | None = None,
    gone: str | None = None, override: bool = False,
) -> Transition:  # fmt: skip
    """The transition ``action`` makes from ``stage`` at time ``at`` (epoch ms), or ``Refused``
    (``StillActive``), or ``NoteRequired``.
    ``active``: what the sensor still reports (e.g. "obscuration 5.2 %/m, threshold 4"), None
    once the device has cleared the condition; ``gone``: why the sensor counts as gone
    (``sensor_gone``); ``override``: the person ends it anyway (needs a note that says why).
    An override that nothing needed is not recorded as one."""
    after = TRANSITIONS.get((stage, action))
    if after is None:
        raise Refused(stage, action)
    if active is None or action not in ENDING:
        return Transition(stage, after, action, actor, note, at)
    if gone is not None:
        return Transition(stage, after, action, actor, note, at, sensor=f"{active}; {gone}")
    if not override:
        raise StillActive(stage, action, active)
    problem = override_note_problem(note)
    if problem is not None:
        raise NoteRequired(problem)
    sensor = f"{active}; still reported"
    return Transition(stage, after, action, actor, note, at, override=True, sensor=sensor)


def still_reported(
    state: str, message: str, point: str, value: object, unit: str, threshold: float | None
) -> str | None:
    """What the sensor still reports, in words, or None once the device cleared the alert
    (``state`` is the device's own: raised, updated, cleared)."""
    if state == "cleared":
        return None
    # four significant digits: a sentence, not a record (the reading's own view has them all)
    shown = str(value)
    if isinstance(value, float):
        shown = f"{value:.4g}" if abs(value) < 10_000 else f"{value:.0f}"
    reading = " ".join(x for x in (point, shown, unit) if x)
    if threshold is not None:
        reading += f", threshold {threshold:g}"
    return f"{message} ({reading})" if message else reading


def device_cleared(stage: Stage, at: int) -> Transition | None:
    """What the device's clear changes: nothing once people have resolved or closed it."""
    after = TRANSITIONS.get((stage, Action.DEVICE_CLEAR))
    if after is None:
        return None
    return Transition(stage, after, Action.DEVICE_CLEAR, DEVICE, "", at)


def time_limit_ms(
    catalogue: Catalogue, category: str, district: str, area_class: str = DEFAULT_AREA_CLASS
) -> int | None:
    """The disposal time limit of a category in a district (its layer may tighten the city's)
    for the place's area class (A core, B, C; "B" when the grid cell is not known)."""
    entry = catalogue.lookup(category, district)
    return None if entry is None else entry.limit_min(area_class) * 60_000


def due_at(
    catalogue: Catalogue, category: str, district: str, raised_at: int, scale: float = 1.0,
    area_class: str = DEFAULT_AREA_CLASS,
) -> int | None:  # fmt: skip
    """When the alert's time limit runs out; ``scale`` shortens every limit for an escalation
    drill (0.01: an hour's limit runs out after 36 s), 1 in service."""
    limit = time_limit_ms(catalogue, category, district, area_class)
    return None if limit is None else raised_at + round(limit * scale)


def is_overdue(stage: Stage, due: int | None, now: int) -> bool:
    return due is not None and stage in WAITING and now > due


def needs_escalation(stage: Stage, due: int | None, escalated_at: int | None, now: int) -> bool:
    """Escalate once: an overdue alert not escalated before."""
    return escalated_at is None and is_overdue(stage, due, now)


def time_left_ms(stage: Stage, due: int | None, now: int) -> int | None:
    """Negative once overdue; None when no limit runs (unknown category, or nobody must act)."""
    if due is None or stage not in WAITING:
        return None
    return due - now
