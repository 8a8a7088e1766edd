"""A case's life at the centre, the city's workflow: the pure core (no I/O, time is an argument).

The edge says what the device sees (raised, updated, cleared); the centre turns an alert into a
case of the city's grid-management workflow (GB/T 30428.8: 立案 filing, 派遣 dispatch, 处置
disposal, 核查 verification, 结案 closure)::

    reported --file--> filed --dispatch--> dispatched --dispose--> disposed --verify--> verified
       |                                       ^                      |                   |
       +--close (never filed)--> closed        +------- reject -------+      closed <--close-+

``urge`` (督办) flags a filed or dispatched case and counts, without moving it. An alert that
arrives is ``reported``; it becomes a case when an operator files it, or when the catalogue's
filing condition holds (``should_file``). A filed case is dispatched to the catalogue's
department at once. After the department reports disposal, the sensor verifies it
(``verify_by_sensor``): the condition stayed clear for the catalogue's verification window ->
verified, then closed; the condition came back, or never went -> re-dispatched (``reject``). An
inspector may verify or reject with a note at any time. Every accepted step becomes a
``Transition`` the store persists: who did what, when, with a note.

Nobody may verify or close a case while its sensor still reports the condition (``StillActive``):
a closed case leaves every list, and a flood that is still there would then be shown by nothing.
If the sensor is gone or broken, the person says so (override with a note).

Time limits (处置时限) come from the catalogue by the grid cell's area class (A core, B, C); they
run from filing, again from each re-dispatch. A filed or dispatched case past its limit is
overdue, and is urged once per limit it is late. A drill scales every time of the workflow
(filing hold, time limit, verification window) by ``scale`` so that it can be rehearsed in
minutes; the catalogue's own minutes are still what messages report.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from device_registry.alerts import wording
from gridwatch.ground.i18n import _


class Stage(enum.StrEnum):
    REPORTED = "reported"
    FILED = "filed"
    DISPATCHED = "dispatched"
    DISPOSED = "disposed"
    VERIFIED = "verified"
    CLOSED = "closed"

    @property
    def zh(self) -> str:
        return wording.STAGE_ZH[self.value]


class Action(enum.StrEnum):
    FILE = "file"
    DISPATCH = "dispatch"
    DISPOSE = "dispose"
    VERIFY = "verify"
    REJECT = "reject"
    CLOSE = "close"
    URGE = "urge"


CENTRE = "centre"
"""The actor of a step the centre took by itself (filing, dispatch, closure, urging)."""
SENSOR = "sensor"
"""The actor of a verification (or a re-dispatch) decided by what the sensor reported."""

# (stage, action) -> next stage; a pair not in the table is refused
TRANSITIONS: dict[tuple[Stage, Action], Stage] = {
    (Stage.REPORTED, Action.FILE): Stage.FILED,
    # not filed: the condition went away by itself, there is nothing to dispatch
    (Stage.REPORTED, Action.CLOSE): Stage.CLOSED,
    (Stage.FILED, Action.DISPATCH): Stage.DISPATCHED,
    (Stage.DISPATCHED, Action.DISPATCH): Stage.DISPATCHED,  # to another department
    (Stage.DISPATCHED, Action.DISPOSE): Stage.DISPOSED,
    (Stage.DISPOSED, Action.VERIFY): Stage.VERIFIED,
    (Stage.DISPOSED, Action.REJECT): Stage.DISPATCHED,
    (Stage.VERIFIED, Action.CLOSE): Stage.CLOSED,
    (Stage.FILED, Action.URGE): Stage.FILED,
    (Stage.DISPATCHED, Action.URGE): Stage.DISPATCHED,
}

WAITING = frozenset({Stage.FILED, Stage.DISPATCHED})
"""Stages in which the time limit runs: the department still has to act."""
LIVE = frozenset({Stage.FILED, Stage.DISPATCHED, Stage.DISPOSED, Stage.VERIFIED})
"""Stages of a case that is filed and not closed yet."""
ENDING = frozenset({Action.VERIFY, Action.CLOSE})
"""Actions that take a case off the department's lists: refused while the condition lasts."""
NOTED = frozenset({Action.VERIFY, Action.REJECT, Action.URGE})
"""Actions a person must explain: what the inspector found, why it failed, what is urged."""


class Refused(ValueError):
    """An action that the case's stage does not allow (an API 409)."""

    def __init__(self, stage: Stage, action: Action, message: str = "") -> None:
        said = _(wording.REFUSED).format(action=wording.action_word(action.value),
                                         stage=wording.stage_word(stage.value))  # fmt: skip
        super().__init__(message or said)
        self.stage = stage
        self.action = action


class StillActive(Refused):
    """Verify or close of a case whose sensor still reports the condition (an API 409)."""

    def __init__(self, stage: Stage, action: Action, condition: str) -> None:
        verb = _(wording.STILL_ACTIVE_VERB[action.value])
        text = _(wording.STILL_ACTIVE).format(verb=verb, condition=condition,
                                              action=wording.action_word(action.value))  # fmt: skip
        super().__init__(stage, action, text)
        self.condition = condition


class NoteRequired(ValueError):
    """A step that needs a note without one (an API 422)."""


SILENT_MS = 24 * 3_600_000
"""A sensor without a reading this long is taken as gone: its case may be verified and closed."""

OVERRIDE_NOTE_MIN = 15
"""An override's note says why in words, not "ok": at least this many characters."""


def override_note_problem(note: str) -> str | None:
    """Why ``note`` cannot carry an override, in words; None when it can."""
    given = len(note.strip())
    if given >= OVERRIDE_NOTE_MIN:
        return None
    said = (
        _(wording.OVERRIDE_GIVEN).format(count=given) if given else _(wording.OVERRIDE_NONE_GIVEN)
    )
    return _(wording.OVERRIDE_NOTE).format(minimum=OVERRIDE_NOTE_MIN, given=said)


def note_problem(action: Action, note: str) -> str | None:
    """Why ``action`` cannot go without a note; None when it has one or needs none."""
    if action not in NOTED or note.strip():
        return None
    return _(wording.NOTE_REQUIRED).format(action=wording.action_word(action.value),
                                           why=_(wording.NOTE_WHY[action.value]))  # fmt: skip


def sensor_gone(retired: bool, last_reading: int | None, now: int) -> str | None:
    """Why the sensor counts as gone, in words, or None while it may still report.
    ``last_reading``: epoch ms of its newest reading or alert update (None: never heard)."""
    if retired:
        return wording.SENSOR_RETIRED  # stored with the step (data): English
    if last_reading is not None and now - last_reading > SILENT_MS:
        return wording.SENSOR_SILENT.format(hours=(now - last_reading) // 3_600_000)
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
    """A person ended the case against a sensor that still reported its condition."""
    sensor: str = ""
    """What the sensor last reported and why the step went against it ("" when it did not)."""
    note_zh: str = ""
    """The centre's own note in Chinese (``note`` is its English); "" for a person's note."""


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
    problem = note_problem(action, note)
    if problem is not None:
        raise NoteRequired(problem)
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
    return (
        f"{message} ({reading(point, value, unit, threshold)})"
        if message
        else reading(point, value, unit, threshold)
    )


def reading(point: str, value: object, unit: str, threshold: float | None) -> str:
    """A reading in words: "depth 0.18 m, threshold 0.15"."""
    # four significant digits: a sentence, not a record (the reading's own view has them all)
    shown = str(value)
    if isinstance(value, float):
        shown = f"{value:.4g}" if abs(value) < 10_000 else f"{value:.0f}"
    said = " ".join(x for x in (point, shown, unit) if x)
    if threshold is not None:
        said += f", threshold {threshold:g}"
    return said


# ---- the catalogue as the workflow reads it (gridwatch.ground.catalogue.Category has these) ----


class Filing(Protocol):
    @property
    def auto(self) -> bool: ...
    @property
    def point(self) -> str | None: ...
    @property
    def above(self) -> float | None: ...
    @property
    def below(self) -> float | None: ...
    @property
    def for_s(self) -> int: ...


class Closure(Protocol):
    @property
    def verify_window_s(self) -> int | None: ...


class CaseRules(Protocol):
    """A catalogue category, as far as the workflow decides by it."""

    @property
    def filing(self) -> Filing: ...
    @property
    def closure(self) -> Closure: ...
    def limit_min(self, area_class: str) -> int: ...


@dataclass(frozen=True, slots=True)
class Sensed:
    """What the device reports about an alert's condition, as the workflow sees it."""

    state: str
    """raised, updated or cleared (the device's own)."""
    point: str
    value: object
    raised_at: int
    changed_at: int
    """Epoch ms of the latest raise or clear (the current state began then)."""


def should_file(category: CaseRules, alert: Sensed, now: int, scale: float = 1.0) -> bool:
    """Whether the catalogue's filing condition holds: filed by the centre itself (``auto``),
    the alert still active, raised at least ``for_s`` (times a drill's ``scale``) ago, its value
    on ``point`` past ``above`` (or under ``below``). The edge's rule already held the value
    past its line since the raise; the value checked here is the latest one."""
    f = category.filing
    if not f.auto or alert.state == "cleared":
        return False
    if f.point and alert.point != f.point:
        return False
    if f.above is not None or f.below is not None:
        value = alert.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if f.above is not None and not value > f.above:
            return False
        if f.below is not None and not value < f.below:
            return False
    return now - alert.raised_at >= round(f.for_s * 1000 * scale)


@dataclass(frozen=True, slots=True)
class Case:
    """A case, as sensor verification sees it."""

    stage: Stage
    disposed_at: int | None
    sensed: Sensed
    """The device's latest alert of the case's condition (a new raise after a clear included)."""


def verify_by_sensor(
    category: CaseRules, case: Case, now: int, scale: float = 1.0
) -> Action | None:
    """What the sensor's reports decide about a disposed case (自动核查): ``VERIFY`` once the
    condition has stayed clear for the catalogue's verification window after disposal;
    ``REJECT`` (re-dispatch) when the condition came back after disposal, or is still there a
    window after it; None while the window runs, or when the catalogue gives the sensor no
    say (no window: an inspector verifies)."""
    window_s = category.closure.verify_window_s
    if case.stage is not Stage.DISPOSED or window_s is None or case.disposed_at is None:
        return None
    window = round(window_s * 1000 * scale)
    sensed = case.sensed
    if sensed.state != "cleared":
        back = sensed.changed_at > case.disposed_at
        return Action.REJECT if back or now - case.disposed_at >= window else None
    clear_since = max(case.disposed_at, sensed.changed_at)
    return Action.VERIFY if now - clear_since >= window else None


# ---- time limits ----------------------------------------------------------------------------

AREA_DEFAULT = "B"
"""The area class of a place whose grid cell is unknown (docs/alerts.md)."""


def due_at(limit_min: int | None, since: int, scale: float = 1.0) -> int | None:
    """When a time limit of ``limit_min`` minutes that starts at ``since`` runs out; ``scale``
    shortens it for a drill (0.01: an hour's limit runs out after 36 s), 1 in service."""
    return None if limit_min is None else since + round(limit_min * 60_000 * scale)


def is_overdue(stage: Stage, due: int | None, now: int) -> bool:
    return due is not None and stage in WAITING and now > due


def needs_urge(
    stage: Stage, due: int | None, limit_ms: int | None, urged_at: int | None, now: int
) -> bool:
    """Urge an overdue case once per time limit it is late: at the first look past ``due``,
    then again each time another limit (``limit_ms``, as scaled) has passed since the last
    urging (a person's included); an urging before the case was late does not count."""
    if not is_overdue(stage, due, now) or due is None:
        return False
    if urged_at is None or urged_at <= due:  # an urging before it was late does not count
        return True
    return limit_ms is not None and now - urged_at >= limit_ms


def time_left_ms(stage: Stage, due: int | None, now: int) -> int | None:
    """Negative once overdue; None when no limit runs (unknown category, or nobody must act)."""
    if due is None or stage not in WAITING:
        return None
    return due - now


def class_code(code: str) -> str:
    """The 4-digit class code of a catalogue code (a city item may carry a longer detail code);
    "" for a code that is not on the national classification."""
    head = code[:4]
    return head if len(head) == 4 and head.isdigit() else ""
