"""``gridwatch profile ...``, ``gridwatch token ...`` and ``gridwatch alert ...``: the registry API
for whoever is not registering hardware (that is ``installer.py``): device profiles to read,
API tokens for an admin to hand out, alerts for an operator to list and act on.

They share the installer's client (``installer.Api``): the same ``--url``/``--token`` options,
the same one-line errors and the same exit codes (``gridwatch.top.exits``, docs/cli.md): 0
done, 1 bad news (no such alert or profile), 2 usage, 3 retry later (the registry cannot be
reached, or answers 503), 4 refused (the token, the role, the request).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from gridwatch.ground.i18n import N_, _

# the installer's --url/--token/--ca-file/--json, so every registry command reads them alike
from gridwatch.top.exits import OK
from gridwatch.top.installer import Api, BadOption, run_api, segment
from gridwatch.top.installer import _common as common_arguments

ROLES = ("installer", "maintenance", "operator", "platform", "admin")
STAGES = ("reported", "filed", "dispatched", "disposed", "verified", "closed")
LIVE = "reported,filed,dispatched,disposed,verified"  # `alert list` unless --stage: work to do
ACTIONS = ("file", "dispatch", "dispose", "verify", "reject", "close", "urge")
ENDING = ("verify", "close")
"""The actions that may override a sensor still reporting the condition."""
STAGE_WORDS = {
    "open": N_("open"),
    "acknowledged": N_("acknowledged"),
    "cleared": N_("cleared"),
    "resolved": N_("resolved"),
    "closed": N_("closed"),
    # the city's case workflow (立案 派遣 处置 核查 结案)
    "reported": N_("reported"),
    "filed": N_("filed"),
    "dispatched": N_("dispatched"),
    "disposed": N_("disposed"),
    "verified": N_("verified"),
}
"""An alert's stage as the registry names it -> as a person reads it."""
ACTION_HELP = {
    "file": N_("file one alert's case (立案), with a note"),
    "dispatch": N_("dispatch one case to its department (派遣), with a note"),
    "dispose": N_("report one case disposed (处置), with a note"),
    "verify": N_("verify one disposed case (核查): the note says what was found"),
    "reject": N_("verification failed: dispatch the case again, the note says why"),
    "close": N_("close one case (结案), with a note"),
    "urge": N_("urge one overdue case (督办): the note says what is urged"),
}


def add_parsers(sub: Any) -> None:
    prof = sub.add_parser("profile", help=_("device profiles the registry knows"))
    profs = prof.add_subparsers(dest="sub", required=True)
    common_arguments(profs.add_parser("list", help=_("every profile with its protocol and points")))
    show = profs.add_parser("show", help=_("one profile, every point in full"))
    show.add_argument("name")
    common_arguments(show)

    tok = sub.add_parser("token", help=_("API tokens (admin)"))
    toks = tok.add_subparsers(dest="sub", required=True)
    create = toks.add_parser("create", help=_("issue a token for a person or machine: shown once"))
    create.add_argument("--role", required=True, choices=ROLES)
    create.add_argument("--name", default=None, help=_("who holds it (default: "
                        "ROLE-YYYYMMDD-HHMM); it names them in the audit log"))  # fmt: skip
    common_arguments(create)

    alert = sub.add_parser("alert", help=_("list alerts and act on them (operators)"))
    alerts = alert.add_subparsers(dest="sub", required=True)
    ls = alerts.add_parser(
        "list", help=_("alerts with their case stage and time left; default: all but closed")
    )
    ls.add_argument("--stage", default=LIVE, help=_("comma-separated, among {stages} (default: "
                    "{default})").format(stages=",".join(STAGES), default=LIVE))  # fmt: skip
    ls.add_argument("--severity", default=None, help=_("e.g. critical"))
    ls.add_argument("--district", default=None)
    ls.add_argument(
        "--category", default=None, help=_("catalogue code, e.g. 0406 (road waterlogging)")
    )
    ls.add_argument("--limit", type=int, default=None)
    common_arguments(ls)
    for action in ACTIONS:
        act = alerts.add_parser(action, help=_(ACTION_HELP[action]))
        act.add_argument("id", help=_("the alert id, as `alert list` shows it"))
        act.add_argument("--note", default="", help=_("why, what was done (the audit trail)"))
        if action in ENDING:
            act.add_argument("--override", action="store_true", help=_("{action} although the "
                             "sensor still reports the condition (broken, gone): needs --note "
                             "saying why; recorded as an override and sent to the city platform")
                             .format(action=action))  # fmt: skip
        common_arguments(act)


async def _profile(args: argparse.Namespace, api: Api) -> int:
    if args.sub == "list":
        profiles = await api.call("GET", "/api/v1/profiles")
        if args.json:
            print(json.dumps(profiles, indent=2))
        for p in [] if args.json else profiles:
            print(f"{p['id']:<28} {p['protocol']:<12} {', '.join(p['points'])}")
        return OK
    profile = await api.call("GET", f"/api/v1/profiles/{segment(args.name)}")
    if args.json:
        print(json.dumps(profile, indent=2))
        return OK
    import yaml

    print(yaml.safe_dump(profile, sort_keys=False), end="")
    return OK


async def _token(args: argparse.Namespace, api: Api) -> int:
    name = args.name or f"{args.role}-{time.strftime('%Y%m%d-%H%M')}"
    issued = await api.call("POST", "/api/v1/tokens", json={"name": name, "role": args.role})
    if args.json:
        print(json.dumps(issued, indent=2))
        return OK
    print(_("token {id} for {name!r}, role {role}:").format(
        id=issued["id"], name=issued["name"], role=issued["role"]))  # fmt: skip
    print(issued["token"])
    print(_("(shown once: give it to its holder, who sets GRIDWATCH_TOKEN to it)"))
    return OK


def _time_left(ms: int | None) -> str:
    if ms is None:
        return "-"
    minutes = abs(ms) // 60_000
    said = _("{minutes} min overdue") if ms < 0 else _("{minutes} min left")
    return said.format(minutes=minutes)


def alert_subject(a: dict[str, Any]) -> str:
    """What the alert is about: ``gateway:device.point``, or for an alert on the whole device
    (its silent and offline rules name no point) the device and what befell it, in words."""
    where = f"{a['gateway']}:{a['device']}"
    if a.get("point"):
        return f"{where}.{a['point']}"
    value = a.get("value")
    if a.get("message"):
        return f"{where} ({a['message']})"
    if isinstance(value, int | float) and not isinstance(value, bool):  # offline: its failures
        return _("{where} (no answer to {polls:g} polls in a row)").format(where=where, polls=value)
    return _("{where} (sends no data)").format(where=where)


def stage_said(stage: str) -> str:
    """An alert's stage in the command's language; one the table lacks, as the registry said it."""
    return _(STAGE_WORDS[stage]) if stage in STAGE_WORDS else stage


def _print_alert(a: dict[str, Any]) -> None:
    print(f"{a['alert_id']:<14} {stage_said(a['stage']):<13} {a['severity']:<9} {a['category']:<20} "
          f"{a['district'] or '-'}/{a['grid'] or '-'}  {alert_subject(a)}  "
          f"{_time_left(a['time_left_ms'])}")  # fmt: skip


async def _alert(args: argparse.Namespace, api: Api) -> int:
    if args.sub == "list":
        q = {k: getattr(args, k) for k in ("stage", "severity", "district", "category", "limit")}
        found = await api.call("GET", "/api/v1/alerts/lifecycle",
                               params={k: str(v) for k, v in q.items() if v is not None})  # fmt: skip
        if args.json:
            print(json.dumps(found, indent=2))
        for a in [] if args.json else found:
            _print_alert(a)
        return OK
    path = f"/api/v1/alerts/{segment(args.id)}/{args.sub}"
    body: dict[str, Any] = {"note": args.note}
    if getattr(args, "override", False):
        # the registry judges the note (how long a reason must be); an empty one is a slip here
        if not args.note.strip():
            raise BadOption(_("--override needs --note saying why the sensor is not to be "
                              "believed, e.g. --note 'detector destroyed by the water'"))  # fmt: skip
        body["override"] = True
    done = await api.call("POST", path, json=body)
    print(json.dumps(done, indent=2)) if args.json else _print_alert(done)
    return OK


COMMANDS = {"profile": _profile, "token": _token, "alert": _alert}


async def _run(args: argparse.Namespace) -> int:
    async with Api(args) as api:
        result: int = await COMMANDS[args.cmd](args, api)
        return result


def main(args: argparse.Namespace) -> int:
    return run_api(_run, args)
