"""An alert in words, for the people it reaches: Chinese first, English second.

One function renders the sentence a crew member or an operator reads about an alert, in one
language (``alert_text``) or in every language shipped (``alert_texts``): whoever shows an alert to
a person, or sends it to one (the demo's console, the centre's platform messages), calls it with
the alert's facts (``facts_of`` takes them from a ``PlatformAlert``). The words come from the
message catalogue (``gridwatch/ground/i18n.py``); the wire contract stays free of them. A
category's name is the catalogue's (``name.zh`` / ``name.en``), handed in by whoever has the
catalogue; without one the class code stands alone. The rule's own message is the profile's data
and is said as written.

    告警发生【严重】路面积水（0406）：wl-01 level = 0.35 m（阈值 0.3 m），漕溪北路：Water level above ...
    ALERT RAISED [critical] road waterlogging (0406): wl-01 level = 0.35 m (threshold 0.3 m), 漕溪北路: ...
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from gridwatch.ground.contract import PlatformAlert
from gridwatch.ground.i18n import LANGS, N_, Lang, translator

STATES = {
    "raised": N_("ALERT RAISED"),
    "updated": N_("ALERT UPDATED"),
    "cleared": N_("ALERT CLEARED"),
}
SEVERITIES = {
    "info": N_("info"),
    "minor": N_("minor"),
    "major": N_("major"),
    "critical": N_("critical"),
}
NAME_KEY: dict[Lang, str] = {"zh_CN": "zh", "en": "en"}
"""A language -> its key in a catalogue name (``{zh: ..., en: ...}``)."""


@dataclass(frozen=True)
class AlertFacts:
    """What an alert's sentence says, as the platform message carries it."""

    state: str
    category: str
    severity: str
    device: str
    point: str
    value: float | int | bool | str | None
    unit: str = ""
    threshold: float | None = None
    message: str = ""
    place: str = ""
    name: Mapping[str, str] | None = None
    """The category's name from the catalogue, ``{zh: ..., en: ...}``; None: the code alone."""


def facts_of(alert: PlatformAlert, name: Mapping[str, str] | None = None) -> AlertFacts:
    """The facts of a platform message, with its category's name when the caller has it."""
    return AlertFacts(
        state=alert.state.value,
        category=alert.category,
        severity=alert.severity.value,
        device=alert.device,
        point=alert.point or alert.rule,
        value=alert.value,
        unit=alert.unit,
        threshold=alert.threshold,
        message=alert.message,
        place=alert.location.street or alert.location.grid,
        name=name,
    )


def _number(value: float | int | bool | str | None, unit: str, lang: Lang) -> str:
    _ = translator(lang)
    if value is None:
        return _("no value")
    if isinstance(value, bool):
        return _("on") if value else _("off")
    said = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{said} {unit}".rstrip()


def alert_text(facts: AlertFacts, lang: Lang) -> str:
    """The alert as one sentence in ``lang``."""
    _ = translator(lang)
    state = _(STATES[facts.state]) if facts.state in STATES else facts.state
    severity = _(SEVERITIES[facts.severity]) if facts.severity in SEVERITIES else facts.severity
    name = (facts.name or {}).get(NAME_KEY[lang], "")
    what = _("{name} ({code})").format(name=name, code=facts.category) if name else facts.category
    subject = f"{facts.device} {facts.point}".rstrip()
    text = _("{state} [{severity}] {what}: {subject} = {value}").format(
        state=state,
        severity=severity,
        what=what,
        subject=subject,
        value=_number(facts.value, facts.unit, lang),
    )
    if facts.threshold is not None:
        limit = _number(facts.threshold, facts.unit, lang)
        text += _(" (threshold {threshold})").format(threshold=limit)
    if facts.place:
        text += _(", {place}").format(place=facts.place)
    if facts.message:
        text += _(": {message}").format(message=facts.message)
    return text


def alert_texts(facts: AlertFacts) -> dict[Lang, str]:
    """The alert in every language shipped, Chinese first."""
    return {lang: alert_text(facts, lang) for lang in LANGS}


__all__ = ["AlertFacts", "alert_text", "alert_texts", "facts_of"]
