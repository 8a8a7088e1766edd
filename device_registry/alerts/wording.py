"""Every sentence the case workflow says to a person, in one place (English for now; the
translation catalogues take them from here).

Each is a ``str.format`` template; the names in braces are what the caller fills in.
"""

from __future__ import annotations

STAGE_ZH = {
    "reported": "上报",
    "filed": "立案",
    "dispatched": "派遣",
    "disposed": "处置",
    "verified": "核查",
    "closed": "结案",
}
"""The city's name of each stage (GB/T 30428.8's words), shown beside the English value."""

REFUSED = "cannot {action} a case that is {stage}"
NOTE_REQUIRED = "{action} needs a note saying {why}; none was given"
NOTE_WHY = {
    "verify": "what the inspector found on site",
    "reject": "why the disposal did not pass verification",
    "urge": "what is urged and of whom",
}
STILL_ACTIVE = (
    "this case cannot be {verb} yet: the sensor still reports {condition}. "
    "Once the device reports the condition gone, it can be {verb}; if the sensor is broken or "
    "gone, {action} with override and say why in the note."
)
STILL_ACTIVE_VERB = {"verify": "verified", "close": "closed"}
OVERRIDE_NOTE = (
    "an override needs a note of at least {minimum} characters saying why the sensor is not "
    "to be believed (e.g. 'detector destroyed by the water'); {given}"
)
OVERRIDE_NONE_GIVEN = "none was given"
OVERRIDE_GIVEN = "{count} given"
NO_DEPARTMENT = (
    "no department to dispatch to: the catalogue names none for {code}; give one in the body "
    '("department": {{"code": ..., "zh": ..., "en": ...}})'
)
SENSOR_RETIRED = "its device is retired"
SENSOR_SILENT = "no reading for {hours} h"

# notes of the steps the centre takes by itself (actor "centre" or "sensor")
AUTO_FILED = "filed by the centre: {filing} ({reading})"
AUTO_DISPATCHED = "dispatched by the centre to {department} ({area} area, {limit} min)"
SENSOR_VERIFIED = "verified by the sensor: the condition stayed clear for {window} s after disposal"
SENSOR_CLOSED = "closed by the centre after the sensor's verification"
CLOSED_WITH_CASE = "closed with the case of alert {case}, of the same incident"
SENSOR_BACK = "re-dispatched: the sensor reports the condition again after disposal ({reading})"
SENSOR_STILL = "re-dispatched: the sensor still reports the condition {window} s after disposal"
AUTO_URGED = "urged by the centre: {overdue_min} min past the {limit} min time limit"
