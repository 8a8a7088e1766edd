"""The case workflow's pure core: transition tables, filing and sensor verification with a fake
clock, time limits by area class, urging."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from device_registry.alerts.lifecycle import (
    OVERRIDE_NOTE_MIN,
    SILENT_MS,
    Action,
    Case,
    NoteRequired,
    Refused,
    Sensed,
    Stage,
    StillActive,
    class_code,
    due_at,
    is_overdue,
    needs_urge,
    sensor_gone,
    should_file,
    step,
    still_reported,
    time_left_ms,
    verify_by_sensor,
)

MIN = 60_000
T0 = 1_700_000_000_000
S = Stage
A = Action


@pytest.mark.parametrize(
    ("stage", "action", "after"),
    [
        (S.REPORTED, A.FILE, S.FILED),
        (S.REPORTED, A.CLOSE, S.CLOSED),  # never filed: it went away by itself
        (S.FILED, A.DISPATCH, S.DISPATCHED),
        (S.DISPATCHED, A.DISPATCH, S.DISPATCHED),  # to another department
        (S.DISPATCHED, A.DISPOSE, S.DISPOSED),
        (S.DISPOSED, A.VERIFY, S.VERIFIED),
        (S.DISPOSED, A.REJECT, S.DISPATCHED),  # re-dispatch
        (S.VERIFIED, A.CLOSE, S.CLOSED),
        (S.FILED, A.URGE, S.FILED),  # 督办: flagged, stage kept
        (S.DISPATCHED, A.URGE, S.DISPATCHED),
        # refused: no step skipped, nothing after closure
        (S.REPORTED, A.DISPATCH, None),
        (S.REPORTED, A.DISPOSE, None),
        (S.REPORTED, A.URGE, None),
        (S.FILED, A.DISPOSE, None),
        (S.FILED, A.CLOSE, None),
        (S.DISPATCHED, A.VERIFY, None),
        (S.DISPATCHED, A.CLOSE, None),
        (S.DISPOSED, A.CLOSE, None),
        (S.DISPOSED, A.URGE, None),  # the department has acted: nothing to urge
        (S.VERIFIED, A.REJECT, None),
        (S.CLOSED, A.FILE, None),
        (S.CLOSED, A.CLOSE, None),
        (S.CLOSED, A.REJECT, None),
    ],
)
def test_steps(stage: Stage, action: Action, after: Stage | None) -> None:
    if after is None:
        with pytest.raises(Refused, match=f"cannot {action.value} a case that is {stage.value}"):
            step(stage, action, "ops-1", T0, note="pump on site")
        return
    t = step(stage, action, "ops-1", T0, note="pump on site")
    assert (t.before, t.after, t.actor, t.at, t.note) == (stage, after, "ops-1", T0, "pump on site")


def test_every_stage_has_its_chinese_name() -> None:
    assert [(s.value, s.zh) for s in Stage] == [
        ("reported", "上报"), ("filed", "立案"), ("dispatched", "派遣"), ("disposed", "处置"),
        ("verified", "核查"), ("closed", "结案"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("stage", "action", "says"),
    [
        (S.DISPOSED, A.VERIFY, "what the inspector found on site"),
        (S.DISPOSED, A.REJECT, "why the disposal did not pass verification"),
        (S.DISPATCHED, A.URGE, "what is urged and of whom"),
    ],
)
def test_a_note_is_required_where_a_person_must_explain(
    stage: Stage, action: Action, says: str
) -> None:
    for note in ("", "   "):
        with pytest.raises(NoteRequired, match=f"{action.value} needs a note saying {says}"):
            step(stage, action, "inspector-li", T0, note)
    assert step(stage, action, "inspector-li", T0, "checked on site").action is action


WATER = "Ponding on the road (depth 0.22 m, threshold 0.15)"


@pytest.mark.parametrize(
    ("stage", "action", "refused"),
    [
        # while the sensor still reports the condition, nothing takes it off the lists...
        (S.DISPOSED, A.VERIFY, "cannot be verified yet: the sensor still reports " + WATER),
        (S.VERIFIED, A.CLOSE, "cannot be closed yet: the sensor still reports"),
        (S.REPORTED, A.CLOSE, "cannot be closed yet"),
        (S.DISPATCHED, A.CLOSE, "cannot close a case that is dispatched"),  # the stage first
        # ...but it may be filed, dispatched, disposed, rejected: people are on it
        (S.REPORTED, A.FILE, None),
        (S.DISPATCHED, A.DISPOSE, None),
        (S.DISPOSED, A.REJECT, None),
    ],
)
def test_a_case_the_sensor_still_reports_is_not_verified_or_closed(
    stage: Stage, action: Action, refused: str | None
) -> None:
    if refused is None:
        assert step(stage, action, "ops-1", T0, "seen", active=WATER).action is action
        return
    with pytest.raises(Refused, match=refused.replace("(", r"\(").replace(")", r"\)")) as exc:
        step(stage, action, "ops-1", T0, "looked at it", active=WATER)
    assert isinstance(exc.value, StillActive) == ("yet" in refused)
    if isinstance(exc.value, StillActive):  # the operator is told the way out
        assert str(exc.value).endswith(
            f"if the sensor is broken or gone, {action.value} with override and say why in the note."
        )


GONE_NOTE = "detector destroyed by the water"


@pytest.mark.parametrize(
    ("retired", "last_reading", "gone"),
    [
        (True, T0, "its device is retired"),  # retired: gone, however fresh its last word
        (False, T0 - SILENT_MS - 1, "no reading for 24 h"),
        (False, T0 - 30 * 3_600_000, "no reading for 30 h"),
        (False, T0 - SILENT_MS, None),  # exactly the bound: not yet
        (False, T0 - MIN, None),
        (False, None, None),  # never heard: unknown is not gone
    ],
)
def test_when_a_sensor_counts_as_gone(
    retired: bool, last_reading: int | None, gone: str | None
) -> None:
    assert sensor_gone(retired, last_reading, T0) == gone


@pytest.mark.parametrize(
    ("stage", "action", "gone", "override", "note", "outcome"),
    [
        # a gone sensor: verify and close work, recorded with what it last said and why
        (S.DISPOSED, A.VERIFY, "its device is retired", False, "cover replaced",
         (S.VERIFIED, False, WATER + "; its device is retired")),
        (S.VERIFIED, A.CLOSE, "no reading for 30 h", False, "",
         (S.CLOSED, False, WATER + "; no reading for 30 h")),
        # a live sensor: only an override with a note that says why
        (S.DISPOSED, A.VERIFY, None, True, GONE_NOTE, (S.VERIFIED, True, WATER + "; still reported")),
        (S.REPORTED, A.CLOSE, None, True, GONE_NOTE, (S.CLOSED, True, WATER + "; still reported")),
        (S.VERIFIED, A.CLOSE, None, True, "", NoteRequired),
        (S.VERIFIED, A.CLOSE, None, True, "  broken   ", NoteRequired),
        (S.VERIFIED, A.CLOSE, None, True, "x" * OVERRIDE_NOTE_MIN,
         (S.CLOSED, True, WATER + "; still reported")),
        (S.DISPOSED, A.VERIFY, None, False, GONE_NOTE, StillActive),
        # the stage still decides first: an override does not skip a step
        (S.DISPATCHED, A.CLOSE, None, True, GONE_NOTE, Refused),
        # nothing to override: an ordinary step, not recorded as an override
        (S.DISPATCHED, A.DISPOSE, None, True, "", (S.DISPOSED, False, "")),
    ],
)  # fmt: skip
def test_ending_a_case_against_its_sensor(
    stage: Stage, action: Action, gone: str | None, override: bool, note: str,
    outcome: tuple[Stage, bool, str] | type[Exception],
) -> None:  # fmt: skip
    if isinstance(outcome, type):
        with pytest.raises(outcome) as exc:
            step(stage, action, "ops-1", T0, note, WATER, gone, override)
        assert type(exc.value) is outcome
        if outcome is NoteRequired:
            assert f"at least {OVERRIDE_NOTE_MIN} characters saying why" in str(exc.value)
        return
    t = step(stage, action, "ops-1", T0, note, WATER, gone, override)
    assert (t.after, t.override, t.sensor) == outcome


@pytest.mark.parametrize(
    ("state", "message", "value", "unit", "threshold", "said"),
    [
        ("raised", "Ponding on the road", 0.22, "m", 0.15, WATER),
        ("updated", "", 0.2896005, "m", None, "depth 0.2896 m"),
        ("raised", "Cover open", True, "", None, "Cover open (depth True)"),
        ("cleared", "Ponding on the road", 0.03, "m", 0.15, None),
    ],
)
def test_what_the_sensor_still_reports(
    state: str, message: str, value: object, unit: str, threshold: float | None, said: str | None
) -> None:
    assert still_reported(state, message, "depth", value, unit, threshold) == said


# ---- the catalogue's machine parts, as the workflow reads them ----


@dataclass(frozen=True)
class Filing:
    auto: bool = True
    point: str | None = "depth"
    above: float | None = 0.15
    below: float | None = None
    for_s: int = 300


@dataclass(frozen=True)
class Closure:
    verify_window_s: int | None = 600


@dataclass(frozen=True)
class Item:
    filing: Filing = field(default_factory=Filing)
    closure: Closure = field(default_factory=Closure)
    limits: tuple[int, int, int] = (30, 60, 120)

    def limit_min(self, area_class: str) -> int:
        return self.limits["ABC".index(area_class)]


PONDING = Item()


def raised(value: object, at: int = T0, point: str = "depth", state: str = "raised") -> Sensed:
    return Sensed(state=state, point=point, value=value, raised_at=at, changed_at=at)


@pytest.mark.parametrize(
    ("item", "alert", "now", "scale", "files"),
    [
        # ponding over 15 cm held 5 minutes: filed by the centre
        (PONDING, raised(0.22), T0 + 5 * MIN, 1.0, True),
        (PONDING, raised(0.22), T0 + 5 * MIN - 1, 1.0, False),  # not held long enough yet
        (PONDING, raised(0.22, state="updated"), T0 + 6 * MIN, 1.0, True),
        (PONDING, raised(0.12), T0 + 6 * MIN, 1.0, False),  # back under the line (hysteresis)
        (PONDING, raised(0.15), T0 + 6 * MIN, 1.0, False),  # over, not at
        (PONDING, raised(0.22, state="cleared"), T0 + 6 * MIN, 1.0, False),
        (PONDING, raised(0.22, point="level"), T0 + 6 * MIN, 1.0, False),  # another point
        (PONDING, raised("high"), T0 + 6 * MIN, 1.0, False),  # not a number
        (PONDING, raised(True), T0 + 6 * MIN, 1.0, False),
        (PONDING, raised(0.22), T0 + 3_000, 0.01, True),  # a drill: 5 min -> 3 s
        (PONDING, raised(0.22), T0 + 2_999, 0.01, False),
        # an operator files these
        (Item(filing=Filing(auto=False)), raised(0.5), T0 + 60 * MIN, 1.0, False),
        # no line: held is enough (a cover opened); a 'below' line (a pressure drop)
        (Item(filing=Filing(point=None, above=None, for_s=0)), raised(True), T0, 1.0, True),
        (Item(filing=Filing(point="pressure", above=None, below=0.1, for_s=0)),
         raised(0.05, point="pressure"), T0, 1.0, True),
        (Item(filing=Filing(point="pressure", above=None, below=0.1, for_s=0)),
         raised(0.12, point="pressure"), T0, 1.0, False),
    ],
)  # fmt: skip
def test_filing_condition(item: Item, alert: Sensed, now: int, scale: float, files: bool) -> None:
    assert should_file(item, alert, now, scale) is files


DISPOSED_AT = T0 + 30 * MIN
WINDOW = 10 * MIN


def case(state: str, changed_at: int, stage: Stage = S.DISPOSED) -> Case:
    sensed = Sensed(state=state, point="depth", value=0.05, raised_at=T0, changed_at=changed_at)
    return Case(stage=stage, disposed_at=DISPOSED_AT, sensed=sensed)


@pytest.mark.parametrize(
    ("item", "c", "now", "scale", "verdict"),
    [
        # clear before disposal: the window runs from the disposal
        (PONDING, case("cleared", T0 + 20 * MIN), DISPOSED_AT + WINDOW - 1, 1.0, None),
        (PONDING, case("cleared", T0 + 20 * MIN), DISPOSED_AT + WINDOW, 1.0, A.VERIFY),
        # clear after disposal: from the clear
        (PONDING, case("cleared", DISPOSED_AT + MIN), DISPOSED_AT + WINDOW, 1.0, None),
        (PONDING, case("cleared", DISPOSED_AT + MIN), DISPOSED_AT + MIN + WINDOW, 1.0, A.VERIFY),
        # the condition came back during the window: re-dispatch at once
        (PONDING, case("raised", DISPOSED_AT + 2 * MIN), DISPOSED_AT + 2 * MIN, 1.0, A.REJECT),
        # still there at disposal: it may drain; not a window later
        (PONDING, case("updated", T0), DISPOSED_AT + WINDOW - 1, 1.0, None),
        (PONDING, case("updated", T0), DISPOSED_AT + WINDOW, 1.0, A.REJECT),
        # a drill: 10 min -> 6 s
        (PONDING, case("cleared", T0), DISPOSED_AT + 6_000, 0.01, A.VERIFY),
        # no verification window in the catalogue: an inspector verifies
        (Item(closure=Closure(None)), case("cleared", T0), DISPOSED_AT + 99 * MIN, 1.0, None),
        # only a disposed case is verified
        (PONDING, case("cleared", T0, S.DISPATCHED), DISPOSED_AT + WINDOW, 1.0, None),
        (PONDING, case("cleared", T0, S.VERIFIED), DISPOSED_AT + WINDOW, 1.0, None),
    ],
)  # fmt: skip
def test_sensor_verification(
    item: Item, c: Case, now: int, scale: float, verdict: Action | None
) -> None:
    assert verify_by_sensor(item, c, now, scale) is verdict


@pytest.mark.parametrize(
    ("area", "scale", "due"),
    [
        ("A", 1.0, T0 + 30 * MIN),  # the core area: the tightest limit
        ("B", 1.0, T0 + 60 * MIN),
        ("C", 1.0, T0 + 120 * MIN),
        ("A", 0.01, T0 + 18_000),  # a drill
    ],
)
def test_time_limit_by_area_class(area: str, scale: float, due: int) -> None:
    assert due_at(PONDING.limit_min(area), T0, scale) == due
    assert due_at(None, T0) is None  # an unknown category has no limit


DUE = T0 + 45 * MIN
LIMIT = 45 * MIN


@pytest.mark.parametrize(
    ("stage", "now", "urged_at", "overdue", "urge", "left"),
    [
        (S.DISPATCHED, DUE - MIN, None, False, False, 1 * MIN),
        (S.DISPATCHED, DUE, None, False, False, 0),
        (S.DISPATCHED, DUE + 1, None, True, True, -1),
        (S.FILED, DUE + 5 * MIN, None, True, True, -5 * MIN),
        (S.DISPATCHED, DUE + 5 * MIN, DUE + 1, True, False, -5 * MIN),  # once per limit...
        (S.DISPATCHED, DUE + 1 + LIMIT, DUE + 1, True, True, -LIMIT - 1),  # ...then again
        (S.DISPATCHED, DUE + 5 * MIN, DUE - MIN, True, True, -5 * MIN),  # urged before: not late
        (S.DISPOSED, DUE + 5 * MIN, None, False, False, None),  # the department has acted
        (S.VERIFIED, DUE + 5 * MIN, None, False, False, None),
        (S.REPORTED, DUE + 5 * MIN, None, False, False, None),
        (S.CLOSED, DUE + 5 * MIN, None, False, False, None),
    ],
)
def test_overdue_and_urging_with_a_fake_clock(
    stage: Stage, now: int, urged_at: int | None, overdue: bool, urge: bool, left: int | None
) -> None:
    assert is_overdue(stage, DUE, now) is overdue
    assert needs_urge(stage, DUE, LIMIT, urged_at, now) is urge
    assert time_left_ms(stage, DUE, now) == left


def test_no_time_limit_never_overdue() -> None:
    assert not is_overdue(S.DISPATCHED, None, T0 + 10**9)
    assert not needs_urge(S.DISPATCHED, None, None, None, T0 + 10**9)
    assert time_left_ms(S.DISPATCHED, None, T0) is None


@pytest.mark.parametrize(
    ("code", "cls"), [("0406", "0406"), ("040601", "0406"), ("2101", "2101"), ("FLOOD-01", "")]
)
def test_class_code(code: str, cls: str) -> None:
    assert class_code(code) == cls
