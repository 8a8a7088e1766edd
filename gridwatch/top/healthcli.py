"""``gridwatch health``: what is unhealthy in the field, from the registry API.

Problems are printed one per root cause, as the registry groups them: the centre when it is not
ingesting (the devices it cannot judge are counted under it, not called silent), a gateway
offline, never connected or silent (with the devices it accounts for), a bus that is down (with
its devices), then single devices by district and grid cell.

Exit status, so scripts and monitoring can act on it: 0 means "checked something and all of it is
healthy"; 1 when there is one problem or more, and also when there was nothing to check (a
gateway that is not registered or is retired, a district, grid or profile no registered device
has), so a mistyped id is never told all is well; 2 for a URL that is no URL; 3 when the registry
cannot be reached or cannot answer now (503), and when the centre is not ingesting (a store or
a broker session down, ingestion behind): the field cannot be judged, retry later; 4 when it
refuses the token or the role: the one table of every command (``gridwatch.top.exits``,
docs/cli.md). It talks to the registry through the installer's client (``installer.Api``): the
same options, the same one-line errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, TextIO

from gridwatch.ground.i18n import N_, _
from gridwatch.top import exits
from gridwatch.top.installer import (
    TOKEN_ENV,
    Api,
    BadOption,
    Refused,
    Unreachable,
    said_state,
    url_help,
)

HEALTHY, UNHEALTHY, NOTHING_CHECKED = exits.OK, exits.BAD_NEWS, exits.BAD_NEWS
USAGE = exits.USAGE
CENTRE_DEGRADED = exits.RETRY_LATER
"""The centre is not ingesting: as with a registry out of reach, the answer is "retry later"."""
_PLURAL = {"district": N_("districts"), "grid": N_("grids"), "profile": N_("profiles")}
_FILTER = {"district": N_("district"), "grid": N_("grid"), "gateway": N_("gateway"),
           "profile": N_("profile")}  # fmt: skip
_KIND = {"gateway": N_("gateway"), "bus": N_("bus")}


def clock(ms: int) -> str:
    """A time of day, UTC, as the registry's reasons print it."""
    return time.strftime("%H:%M:%S UTC", time.gmtime(ms / 1000))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = _(exits.CLIENT_EPILOG)
    p.add_argument("--url", default=None, help=url_help())
    p.add_argument("--token", default=None,
                   help=_("API token (default: env {env})").format(env=TOKEN_ENV))  # fmt: skip
    p.add_argument("--token-env", default=TOKEN_ENV, help=_("env var holding the API token"))
    p.add_argument("--ca-file", default=None, help=_("CA that signed the API's certificate"))
    for name in ("district", "grid", "gateway", "profile"):
        p.add_argument(f"--{name}", default=None,
                       help=_("only this {what}").format(what=_(_FILTER[name])))  # fmt: skip
    p.add_argument("--all", action="store_true", help=_("list healthy devices too"))
    p.add_argument("--json", action="store_true", help=_("print the API's JSON"))
    p.add_argument("--timeout", type=float, default=10.0)


async def fetch(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    query = {k: getattr(args, k) for k in ("district", "grid", "gateway", "profile")}
    params = {k: v for k, v in query.items() if v is not None}
    # the API pages its device list (1,000 by default); a crew's question is one district or
    # gateway, so the largest page holds it: a field larger than that is cut, and says so
    params["limit"] = str(MAX_DEVICES)
    async with Api(args, token_env=args.token_env) as api:
        body: dict[str, Any] = await api.call(
            "GET",
            "/api/v1/health",
            params=params,
            timeout=aiohttp.ClientTimeout(total=args.timeout),
        )
        return body


MAX_DEVICES = 10_000
"""The API's largest page of devices (docs/registry.md, "Lists and pages")."""


def render(report: dict[str, Any], show_all: bool, out: TextIO) -> None:
    """One block per root cause (a gateway, a bus, then single devices by place), the devices a
    cause covers listed under it, then a summary that counts devices and gateways apart."""
    problems = report.get("problems", [])
    devices = {d["id"]: d for d in report["devices"]}
    last = None
    # a part of the centre that fails while the centre still ingests (a share group's member
    # the others cover for): named, but the field is judged as usual
    for part in (report.get("centre") or {}).get("degraded") or []:
        print(_("centre: degraded, still ingesting: {part}").format(part=part), file=out)
    for p in problems:
        if p["kind"] == "centre":
            print("\n" + _("centre: {status}: {reason}").format(
                status=_status(p["status"]), reason=p["reason"]), file=out)  # fmt: skip
            if show_all:  # else one line: the whole field, each "unknown" for the same reason
                for dev_id in p["devices"]:
                    print(f"  {dev_id:<28} {_status('unknown')}  "
                          f"{_why_unknown(devices.get(dev_id))}", file=out)  # fmt: skip
            continue
        if p["kind"] == "device":
            where = (p["district"] or "-", p["grid"] or "-")
            if where != last:
                print(f"\n{where[0]} / {where[1]}", file=out)
                last = where
            print(f"  {p['id']:<28} {_status(p['status']):<8} {p['reason']}", file=out)
            continue
        kind = _(_KIND[p["kind"]]) if p["kind"] in _KIND else p["kind"]
        said = _("{kind} {id}: {status}: {reason}").format(
            kind=kind, id=p["id"], status=_status(p["status"]), reason=p["reason"]
        )
        print(f"\n{said}", file=out)
        for dev_id in p["devices"]:
            d = devices.get(dev_id, {"status": "", "reasons": []})
            print(f"  {dev_id:<28} {_status(d['status']):<8} {'; '.join(d['reasons'])}",
                  file=out)  # fmt: skip
    if show_all:
        listed = {i for p in problems for i in p["devices"]}
        healthy = [d for d in report["devices"] if d["id"] not in listed and d["healthy"]]
        if healthy:
            print("\n" + _("healthy"), file=out)
        ok = _("ok")
        for d in healthy:
            print(f"  {d['id']:<28} {_status(d['status']):<8} {ok}", file=out)
    if len(report["devices"]) >= MAX_DEVICES:  # the API's largest page: the rest is not here
        print("\n" + _("only the first {n} devices are listed: narrow with --district, --grid "
                        "or --gateway").format(n=MAX_DEVICES), file=out)  # fmt: skip
    print(f"\n{summary_line(report)}", file=out)


def _why_unknown(device: dict[str, Any] | None) -> str:
    """Why a device the centre's problem covers is "unknown": when it was last heard of, and
    that its silence cannot be judged while the centre is behind (the reason is above)."""
    seen = None if device is None else device.get("last_seen")
    last = (_("never heard from") if seen is None
            else _("last heard from at {time}").format(time=clock(int(seen))))  # fmt: skip
    return _("{last}; cannot tell whether it is silent while the centre is not ingesting (above)"
             ).format(last=last)  # fmt: skip


def summary_line(report: dict[str, Any]) -> str:
    """'2 problems: 28 of 40 devices unhealthy; 3 of 5 gateways unhealthy': devices and gateways
    are counted apart, never added together."""
    s = report["summary"]
    n = len(report.get("problems", []))
    head = _("healthy") if n == 0 else _("1 problem") if n == 1 else _("{n} problems").format(n=n)
    unknown = _(", {n} unknown")
    dev_unknown = unknown.format(n=s["devices_unknown"]) if s.get("devices_unknown") else ""
    gw_unknown = unknown.format(n=s["gateways_unknown"]) if s.get("gateways_unknown") else ""
    return _("{head}: {devices_unhealthy} of {devices} devices unhealthy{devices_unknown}; "
             "{gateways_unhealthy} of {gateways} gateways unhealthy{gateways_unknown}").format(
        head=head, devices_unhealthy=s["devices_unhealthy"], devices=s["devices"],
        devices_unknown=dev_unknown, gateways_unhealthy=s["gateways_unhealthy"],
        gateways=s["gateways"], gateways_unknown=gw_unknown)  # fmt: skip


def nothing_line(nothing: dict[str, Any]) -> str:
    """'nothing matches district '31014' (districts: 310104, 310105)': the values that do
    exist, for each filter whose value is not among them."""
    filters: dict[str, str] = nothing.get("filters") or {}
    known: dict[str, list[str]] = nothing.get("known") or {}
    said = _(" and ").join(
        f"{_(_FILTER[k]) if k in _FILTER else k} {v!r}" for k, v in filters.items()
    )
    none = _("none registered")
    hints = [_("{what}: {values}").format(what=_(_PLURAL[k]) if k in _PLURAL else k,
                                          values=", ".join(known.get(k) or []) or none)
             for k, v in filters.items() if v not in (known.get(k) or [])]  # fmt: skip
    if not hints:
        return _("nothing matches {filters}").format(filters=said)
    return _("nothing matches {filters} ({hints})").format(filters=said, hints="; ".join(hints))


def _no_gateway(gw: str, exc: Refused) -> str:
    detail = exc.body.get("detail", "") if isinstance(exc.body, dict) else ""
    if exc.status == 404:
        return _("no gateway {id!r} is registered (`gridwatch gateway list` shows those that "
                 "are)").format(id=gw)  # fmt: skip
    return detail or _("gateway {id!r} is retired").format(id=gw)


def _status(status: str) -> str:
    return said_state(status)


def main(args: argparse.Namespace) -> int:
    try:
        report = asyncio.run(fetch(args))
    except BadOption as exc:
        print(f"gridwatch: {exc}", file=sys.stderr)
        return USAGE
    except Refused as exc:
        if args.gateway is not None and exc.status in (404, 409):
            print(f"gridwatch: {_no_gateway(args.gateway, exc)}", file=sys.stderr)
            return NOTHING_CHECKED
        print(f"gridwatch: {exc}", file=sys.stderr)
        return exits.for_http(exc.status)
    except (Unreachable, OSError) as exc:  # OSError: a CA file that cannot be read
        print(f"gridwatch: {exc}", file=sys.stderr)
        return exits.RETRY_LATER
    if args.json:
        print(json.dumps(report, indent=2))
    elif report.get("nothing_matches"):
        print(f"gridwatch: {nothing_line(report['nothing_matches'])}", file=sys.stderr)
    else:
        render(report, args.all, sys.stdout)
    if report.get("healthy") is None:
        return NOTHING_CHECKED
    if any(p["kind"] == "centre" for p in report["problems"]):
        return CENTRE_DEGRADED
    # the groups decide: a registry that finds no root cause has nothing for a crew to do
    return UNHEALTHY if report["problems"] else HEALTHY
