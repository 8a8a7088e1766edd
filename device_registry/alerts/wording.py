"""Every sentence the case workflow says to a person, in one place.

Each is a ``str.format`` template marked ``N_`` (the message catalogues, gridwatch/locale/, take
them from here); the names in braces are what the caller fills in. A refusal is said with
``_()`` where it is raised, so an API answer speaks the request's language (``stage_word`` and
``action_word`` name a stage and an action in it too). The notes of the centre's own steps are
data: stored and sent in English as before (``note``) and in Chinese beside it (``note_zh``),
both made by ``centre_note`` whatever the language of the request that caused the step.
"""

from __future__ import annotations

from gridwatch.ground import i18n
from gridwatch.ground.i18n import N_

STAGE_ZH = {
    "reported": "上报",
    "filed": "立案",
    "dispatched": "派遣",
    "disposed": "处置",
    "verified": "核查",
    "closed": "结案",
}
"""The city's name of each stage (GB/T 30428.8's words), shown beside the English value."""

ACTION_ZH = {
    "file": "立案",
    "dispatch": "派遣",
    "dispose": "报告处置",
    "verify": "核查",
    "reject": "退回重派",
    "close": "结案",
    "urge": "督办",
}
"""The city's words for each action, as a Chinese sentence names it."""


def stage_word(stage: str) -> str:
    """A stage as the current language names it: 立案 in Chinese, ``filed`` in English."""
    return STAGE_ZH.get(stage, stage) if i18n.current() == "zh_CN" else stage


def action_word(action: str) -> str:
    """An action as the current language names it: 核查 in Chinese, ``verify`` in English."""
    return ACTION_ZH.get(action, action) if i18n.current() == "zh_CN" else action


REFUSED = N_("cannot {action} a case that is {stage}")
NOTE_REQUIRED = N_("{action} needs a note saying {why}; none was given")
NOTE_WHY = {
    "verify": N_("what the inspector found on site"),
    "reject": N_("why the disposal did not pass verification"),
    "urge": N_("what is urged and of whom"),
}
STILL_ACTIVE = N_(
    "this case cannot be {verb} yet: the sensor still reports {condition}. "
    "Once the device reports the condition gone, it can be {verb}; if the sensor is broken or "
    "gone, {action} with override and say why in the note."
)
STILL_ACTIVE_VERB = {"verify": N_("verified"), "close": N_("closed")}
OVERRIDE_NOTE = N_(
    "an override needs a note of at least {minimum} characters saying why the sensor is not "
    "to be believed (e.g. 'detector destroyed by the water'); {given}"
)
OVERRIDE_NONE_GIVEN = N_("none was given")
OVERRIDE_GIVEN = N_("{count} given")
NO_DEPARTMENT = N_(
    "no department to dispatch to: the catalogue names none for {code}; give one in the body "
    '("department": {{"code": ..., "zh": ..., "en": ...}})'
)
SENSOR_RETIRED = "its device is retired"
SENSOR_SILENT = "no reading for {hours} h"

# notes of the steps the centre takes by itself (actor "centre" or "sensor")
AUTO_FILED = N_("filed by the centre: {filing} ({reading})")
AUTO_DISPATCHED = N_("dispatched by the centre to {department} ({area} area, {limit} min)")
SENSOR_VERIFIED = N_(
    "verified by the sensor: the condition stayed clear for {window} s after disposal"
)
SENSOR_CLOSED = N_("closed by the centre after the sensor's verification")
CLOSED_WITH_CASE = N_("closed with the case of alert {case}, of the same incident")
SENSOR_BACK = N_("re-dispatched: the sensor reports the condition again after disposal ({reading})")
SENSOR_STILL = N_("re-dispatched: the sensor still reports the condition {window} s after disposal")
AUTO_URGED = N_("urged by the centre: {overdue_min} min past the {limit} min time limit")


def centre_note(
    template: str, en: dict[str, object], zh: dict[str, object] | None = None
) -> tuple[str, str]:
    """A note of the centre's own step as (English, Chinese): ``en`` fills the template in
    English, ``zh`` in Chinese where a value has words of its own language (a department's
    name, a filing condition); without it, ``en``'s values."""
    said_zh = i18n.translator("zh_CN")(template).format(**(en if zh is None else zh))
    return template.format(**en), said_zh
