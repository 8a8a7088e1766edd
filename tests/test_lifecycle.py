"""The alert lifecycle core: transition tables, time limits from the catalogue, a fake clock."""

from __future__ import annotations

import pytest

from device_registry.alerts.lifecycle import (
    OVERRIDE_NOTE_MIN,
    SILENT_MS,
    Action,
    NoteRequired,
    Refused,
    Stage,
    StillActive,
    device_cleared,
    due_at,
    is_overdue,
    needs_escalation,
    sensor_gone,
    step,
    still_reported,
    time_left_ms,
)
from gridwatch.ground.catalogue import default_catalogue_dir, load_catalogue

MIN = 60_000
T0 = 1_700_000_000_000


@pytest.mark.parametrize(
    ("stage", "action", "after"),
    [
        (Stage.OPEN, Action.ACK, Stage.ACKNOWLEDGED),
        (Stage.OPEN, Action.RESOLVE, Stage.RESOLVED),
        (Stage.ACKNOWLEDGED, Action.RESOLVE, Stage.RESOLVED),
        (Stage.RESOLVED, Action.CLOSE, Stage.CLOSED),
        (Stage.CLEARED, Action.CLOSE, Stage.CLOSED),
        (Stage.CLEARED, Action.RESOLVE, Stage.RESOLVED),
        (Stage.OPEN, Action.CLOSE, None),
        (Stage.ACKNOWLEDGED, Action.ACK, None),
        (Stage.ACKNOWLEDGED, Action.CLOSE, None),
        (Stage.RESOLVED, Action.ACK, None),
        (Stage.RESOLVED, Action.RESOLVE, None),
        (Stage.CLOSED, Action.ACK, None),
        (Stage.CLOSED, Action.RESOLVE, None),
        (Stage.CLOSED, Action.CLOSE, None),
        (Stage.CLEARED, Action.ACK, None),
    ],
)
def test_operator_steps(stage: Stage, action: Action, after: Stage | None) -> None:
    if after is None:
        with pytest.raises(Refused, match=f"cannot {action.value}"):
            step(stage, action, "ops-1", T0)
        return
    t = step(stage, action, "ops-1", T0, note="pump on site")
    assert (t.before, t.after, t.actor, t.at, t.note) == (stage, after, "ops-1", T0, "pump on site")


SMOKE = "Smoke detected (obscuration 5.2 %/m, threshold 4)"


@pytest.mark.parametrize(
    ("stage", "action", "refused"),
    [
        # while the sensor still reports the condition, nothing takes it off the lists...
        (Stage.OPEN, Action.RESOLVE, "cannot be resolved yet: the sensor still reports " + SMOKE),
        (Stage.ACKNOWLEDGED, Action.RESOLVE, "cannot be resolved yet"),
        (Stage.RESOLVED, Action.CLOSE, "cannot be closed yet: the sensor still reports"),
        (Stage.OPEN, Action.CLOSE, "cannot close an alert that is open"),  # the stage says first
        # ...but it may be acknowledged: somebody is on it
        (Stage.OPEN, Action.ACK, None),
    ],
)
def test_an_alert_the_sensor_still_reports_is_not_resolved_or_closed(
    stage: Stage, action: Action, refused: str | None
) -> None:
    if refused is None:
        assert step(stage, action, "ops-1", T0, active=SMOKE).after is Stage.ACKNOWLEDGED
        return
    with pytest.raises(Refused, match=refused.replace("(", r"\(").replace(")", r"\)")) as exc:
        step(stage, action, "ops-1", T0, active=SMOKE)
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
    ("stage", "action", "active", "gone", "override", "note", "outcome"),
    [
        # a gone sensor: resolve and close work, recorded with what it last said and why
        (
            Stage.OPEN,
            Action.RESOLVE,
            SMOKE,
            "its device is retired",
            False,
            "",
            (Stage.RESOLVED, False, SMOKE + "; its device is retired"),
        ),
        (
            Stage.RESOLVED,
            Action.CLOSE,
            SMOKE,
            "no reading for 30 h",
            False,
            "",
            (Stage.CLOSED, False, SMOKE + "; no reading for 30 h"),
        ),
        # a live sensor: only an override with a note that says why
        (
            Stage.ACKNOWLEDGED,
            Action.RESOLVE,
            SMOKE,
            None,
            True,
            GONE_NOTE,
            (Stage.RESOLVED, True, SMOKE + "; still reported"),
        ),
        (
            Stage.RESOLVED,
            Action.CLOSE,
            SMOKE,
            None,
            True,
            GONE_NOTE,
            (Stage.CLOSED, True, SMOKE + "; still reported"),
        ),
        (Stage.OPEN, Action.RESOLVE, SMOKE, None, True, "", NoteRequired),
        (Stage.OPEN, Action.RESOLVE, SMOKE, None, True, "  broken   ", NoteRequired),
        (
            Stage.OPEN,
            Action.RESOLVE,
            SMOKE,
            None,
            True,
            "x" * OVERRIDE_NOTE_MIN,
            (Stage.RESOLVED, True, SMOKE + "; still reported"),
        ),
        (Stage.OPEN, Action.RESOLVE, SMOKE, None, False, GONE_NOTE, StillActive),
        # the stage still decides first: an override does not skip a step
        (Stage.OPEN, Action.CLOSE, SMOKE, None, True, GONE_NOTE, Refused),
        # nothing to override: an ordinary step, not recorded as an override
        (Stage.CLEARED, Action.CLOSE, None, None, True, GONE_NOTE, (Stage.CLOSED, False, "")),
        (Stage.OPEN, Action.ACK, SMOKE, None, True, "", (Stage.ACKNOWLEDGED, False, "")),
    ],
)
def test_ending_an_alert_against_its_sensor(
    stage: Stage, action: Action, active: str | None, gone: str | None, override: bool,
    note: str, outcome: tuple[Stage, bool, str] | type[Exception],
) -> None:  # fmt: skip
    if isinstance(outcome, type):
        with pytest.raises(outcome) as exc:
            step(stage, action, "ops-1", T0, note, active, gone, override)
        assert type(exc.value) is outcome
        if outcome is NoteRequired:
            assert f"at least {OVERRIDE_NOTE_MIN} characters saying why" in str(exc.value)
        return
    t = step(stage, action, "ops-1", T0, note, active, gone, override)
    assert (t.after, t.override, t.sensor) == outcome


@pytest.mark.parametrize(
    ("state", "message", "value", "unit", "threshold", "said"),
    [
        ("raised", "Smoke detected", 5.2, "%/m", 4.0, SMOKE),
        ("updated", "", 2.896005, "m", None, "obscuration 2.896 m"),
        ("raised", "Cover open", True, "", None, "Cover open (obscuration True)"),
        ("cleared", "Smoke detected", 0.3, "%/m", 4.0, None),
    ],
)
def test_what_the_sensor_still_reports(
    state: str, message: str, value: object, unit: str, threshold: float | None, said: str | None
) -> None:
    assert still_reported(state, message, "obscuration", value, unit, threshold) == said


@pytest.mark.parametrize(
    ("stage", "after"),
    [
        (Stage.OPEN, Stage.CLEARED),
        (Stage.ACKNOWLEDGED, Stage.CLEARED),
        (Stage.RESOLVED, None),  # people already said it is fixed: the clear is only recorded
        (Stage.CLOSED, None),
        (Stage.CLEARED, None),
    ],
)
def test_device_clear(stage: Stage, after: Stage | None) -> None:
    t = device_cleared(stage, T0)
    assert (t.after if t else None) == after
    if t:
        assert t.actor == "device"


@pytest.mark.parametrize(
    ("category", "district", "area_class", "limit_min"),
    [
        ("0406", "", "B", 60),  # city layer
        ("0406", "310104", "B", 45),  # the district layer tightens it
        ("0406", "xuhui", "B", 45),  # ... by the name device locations give it
        ("0406", "310104", "A", 30),  # the core area (A) keeps the city's tighter limit
        ("0406", "310104", "C", 90),
        ("0406", "310104", "", 45),  # area class not known: "B"
        ("0406", "310110", "B", 60),  # a district without a layer: the city's
        ("040611", "310104", "B", 20),  # a district's own item
        ("040611", "", "B", None),  # ... unknown to the city
        ("NO-SUCH-CODE", "310104", "B", None),
    ],
)
def test_time_limit_from_city_and_district_layers_by_area_class(
    category: str, district: str, area_class: str, limit_min: int | None
) -> None:
    cat = load_catalogue(default_catalogue_dir())
    due = due_at(cat, category, district, T0, area_class=area_class)
    assert due == (None if limit_min is None else T0 + limit_min * MIN)


@pytest.mark.parametrize(
    ("stage", "now", "escalated_at", "overdue", "escalate", "left"),
    [
        (Stage.OPEN, T0 + 44 * MIN, None, False, False, 1 * MIN),
        (Stage.OPEN, T0 + 45 * MIN, None, False, False, 0),
        (Stage.OPEN, T0 + 45 * MIN + 1, None, True, True, -1),
        (Stage.ACKNOWLEDGED, T0 + 50 * MIN, None, True, True, -5 * MIN),
        (Stage.ACKNOWLEDGED, T0 + 50 * MIN, T0 + 46 * MIN, True, False, -5 * MIN),  # once
        (Stage.RESOLVED, T0 + 50 * MIN, None, False, False, None),  # nobody has to act
        (Stage.CLEARED, T0 + 50 * MIN, None, False, False, None),
        (Stage.CLOSED, T0 + 50 * MIN, None, False, False, None),
    ],
)
def test_overdue_and_escalation_with_a_fake_clock(
    stage: Stage, now: int, escalated_at: int | None, overdue: bool, escalate: bool,
    left: int | None,
) -> None:  # fmt: skip
    due = T0 + 45 * MIN
    assert is_overdue(stage, due, now) is overdue
    assert needs_escalation(stage, due, escalated_at, now) is escalate
    assert time_left_ms(stage, due, now) == left


def test_no_time_limit_never_overdue() -> None:
    assert not is_overdue(Stage.OPEN, None, T0 + 10**9)
    assert time_left_ms(Stage.OPEN, None, T0) is None
