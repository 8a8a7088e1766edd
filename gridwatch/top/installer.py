"""``gridwatch gateway ...`` and ``gridwatch device ...``: the installer's side of the registry API.

Exit codes, for scripts: ``gridwatch.top.exits``' table, as every command (docs/cli.md): 0 done,
1 bad news (no such gateway or device, a device that did not report or reads wrong, a command not
carried out), 2 usage, 3 retry later (the registry cannot be reached, or answers 503), 4 refused
(a token it does not know, a role that may not, a value it does not take).

``Api`` is the one client every command that talks to the registry uses (here, ``healthcli`` and
``registrycli``): the address from ``--url``, ``GRIDWATCH_URL`` or ``DEFAULT_URL`` (``http://``
assumed without a scheme), the token from ``--token`` or ``GRIDWATCH_TOKEN``, and every failure
(no such host, nobody listening, a bad URL, a refused or missing token) as one line that says
what to do, through ``run_api``: never a traceback.

``device commission`` waits for a device's first readings, shows them with their quality and the
device's active alerts (a device in alarm is never reported as simply good), and
flags values that look like a byte-order mistake: a multi-register value that is absurd (not a
number, huge, a denormal-looking speck, outside its range) but plausible when its registers or
bytes are read in another order. The codec does the re-reading (pure, no I/O).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gridwatch.ground import i18n
from gridwatch.ground.departments import DEPARTMENTS, department_cell
from gridwatch.ground.i18n import N_, _
from gridwatch.ground.outage import one_line
from gridwatch.top import exits
from gridwatch.top.exits import OK, USAGE

FAILED = exits.BAD_NEWS
TOKEN_ENV = "GRIDWATCH_TOKEN"
URL_ENV = "GRIDWATCH_URL"
DEFAULT_URL = "http://127.0.0.1:8080"
"""Where ``gridwatch central run`` and ``registry serve`` listen unless told otherwise."""
URL_HELP = N_("registry API base URL (default: env {env}, else {url})")
"""``--url``'s help, to translate and fill with ``url_help()``."""


def url_help() -> str:
    return _(URL_HELP).format(env=URL_ENV, url=DEFAULT_URL)


def token_hint() -> str:
    return _(
        "set {env} or use --token; an admin creates one with "
        "`gridwatch token create --role installer`"
    ).format(env=TOKEN_ENV)


# ---- arguments ------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.epilog = p.epilog or _(exits.CLIENT_EPILOG)
    p.add_argument("--url", default=None, help=url_help())
    p.add_argument("--token", default=None,
                   help=_("API token (default: env {env})").format(env=TOKEN_ENV))  # fmt: skip
    p.add_argument("--ca-file", default=None, help=_("CA that signed the API's certificate"))
    p.add_argument("--json", action="store_true", help=_("print the registry's JSON answer"))


def _location(p: argparse.ArgumentParser) -> None:
    p.add_argument("--district", default=None)
    p.add_argument("--street", default=None)
    p.add_argument("--grid", default=None, help=_("grid cell of the city's management grid"))
    p.add_argument("--lat", type=float, default=None)
    p.add_argument("--lon", type=float, default=None)
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")


_BUS_SETTINGS = ("type", "host", "port", "timeout_s", "max_concurrency", "framer", "baudrate",
                 "parity", "stopbits", "bytesize")  # fmt: skip


def _edit_parser(gws: Any) -> None:
    ed = gws.add_parser("edit", help=_("change a registered gateway: name, location, labels, "
                        "or one field bus's settings (a new config is pushed to it)"))  # fmt: skip
    ed.add_argument("id")
    ed.add_argument("--name", default=None)
    _location(ed)
    b = ed.add_argument_group(_("a field bus"), _("e.g. --bus cabinet --timeout 0.5; with "
                              "--type, a bus to add"))  # fmt: skip
    b.add_argument("--bus", default=None, metavar="ID", help=_("the bus to change (or add)"))
    b.add_argument("--type", default=None, choices=["modbus_tcp", "modbus_rtu", "mqtt"])
    b.add_argument("--host", default=None)
    b.add_argument("--port", default=None, help=_("TCP port, or the serial device (modbus_rtu)"))
    b.add_argument("--timeout", dest="timeout_s", type=float, default=None, metavar="SECONDS",
                   help=_("how long to wait for a device's answer"))  # fmt: skip
    b.add_argument("--max-concurrency", type=int, default=None)
    b.add_argument("--framer", default=None, choices=["socket", "rtu"])
    b.add_argument("--baudrate", type=int, default=None)
    b.add_argument("--parity", default=None, choices=["N", "E", "O"])
    b.add_argument("--stopbits", type=int, default=None, choices=[1, 2])
    b.add_argument("--bytesize", type=int, default=None, choices=[7, 8])
    _common(ed)


def add_parsers(sub: Any) -> None:
    gw = sub.add_parser("gateway", help=_("register and inspect gateways (installers)"))
    gws = gw.add_subparsers(dest="sub", required=True)
    add = gws.add_parser("add", help=_("register a gateway: prints its MQTT password once"))
    add.add_argument("id")
    add.add_argument("--name", default="")
    add.add_argument("--bus", action="append", default=[], metavar="type=...,id=...,...",
                     help=_("a field bus, e.g. type=modbus_tcp,id=cabinet,host=10.0.0.5,port=502"))  # fmt: skip
    add.add_argument("--write-config", default=None, metavar="FILE",
                     help=_("write the gateway's config (YAML) to FILE, to copy onto the box"))  # fmt: skip
    _location(add)
    for name, helptext in (("list", _("list gateways")),
                           ("show", _("one gateway, with its config state")),
                           ("config", _("print the gateway's current config (YAML), e.g. "
                            "> gw.yaml")),
                           ("retire", _("retire a gateway: its broker access ends at once")),
                           ("new-password", _("a new MQTT password (the old one stops at once): "
                            "printed once"))):  # fmt: skip
        p = gws.add_parser(name, help=helptext)
        if name != "list":
            p.add_argument("id")
        else:
            p.add_argument("--district", default=None)
            p.add_argument("--all", action="store_true", help=_("retired gateways too (marked)"))
        _common(p)
    _common(add)
    _edit_parser(gws)

    dev = sub.add_parser("device", help=_("register, commission and retire devices (installers)"))
    devs = dev.add_subparsers(dest="sub", required=True)
    d = devs.add_parser("add", help=_("register a device on a gateway"))
    d.add_argument("gateway")
    d.add_argument("id")
    d.add_argument("--profile", required=True)
    d.add_argument("--bus", required=True)
    d.add_argument("--unit-id", type=int, default=None, help=_("Modbus unit id"))
    d.add_argument("--address", default=None, help=_("MQTT device address"))
    d.add_argument("--install-date", default=None, help="YYYY-MM-DD")
    d.add_argument("--firmware", default=None)
    d.add_argument(
        "--component-id",
        default=None,
        help=_("the city component (部件) it is attached to: 16 digits"),
    )
    for dept, zh in DEPARTMENTS.items():
        d.add_argument(
            f"--dept-{dept}",
            default=None,
            metavar="CODE:NAME",
            help=_("{zh} department, as the CSV takes it").format(zh=zh),
        )
    _location(d)
    _common(d)
    imp = devs.add_parser("import", help=_("register devices from a CSV file (all or nothing)"))
    imp.add_argument("file")
    _common(imp)
    ls = devs.add_parser("list", help=_("list devices"))
    for f in ("gateway", "district", "grid", "profile", "status"):
        ls.add_argument(f"--{f}", default=None)
    ls.add_argument("--retired", choices=["true", "false", "any"], default=None)
    ls.add_argument("--limit", type=int, default=None)
    _common(ls)
    for name, helptext in (("show", _("one device with its last values")),
                           ("retire", _("retire a device (it leaves its gateway's config)"))):  # fmt: skip
        p = devs.add_parser(name, help=helptext)
        p.add_argument("id", help=_("'gateway:device' or a device id unique across gateways"))
        _common(p)
    com = devs.add_parser("commission", help=_("wait for a device's first readings and check them"))
    com.add_argument("id")
    com.add_argument("--timeout", type=float, default=60.0, help=_("seconds to wait"))
    _common(com)
    cmd = devs.add_parser(
        "command", help=_("write a value to a device's point; wait for the result")
    )
    cmd.add_argument("id")
    cmd.add_argument("point")
    cmd.add_argument("value", help=_("true/false or a number"))
    cmd.add_argument("--timeout", type=float, default=30.0)
    _common(cmd)


# ---- the HTTP client ------------------------------------------------------------------------


class Unreachable(Exception):
    pass


class BadOption(Exception):
    """An option that cannot be used as given (the registry's address, the CA file, a
    ``key=value`` that is not one): a usage mistake (exit 2)."""


class Refused(Exception):
    def __init__(self, status: int, body: Any, message: str | None = None) -> None:
        self.status, self.body = status, body
        super().__init__(message or _explain(status, body))


def _explain(status: int, body: Any) -> str:
    if not isinstance(body, dict):  # not the registry's problem (a proxy, another server): its
        # text, on one line, after the words its exit code says ("refused" for what exits 4)
        body = {"detail": one_line(str(body))} if body else {}
    # the registry's errors are problems (RFC 9457): title, detail, and each field's error.
    # A 422's detail repeats its first errors in one line: print the list alone, each field once
    title = str(body.get("title") or "")
    said = exits.said(status)  # as its exit code says
    head = (
        _("{said} ({status} {title})").format(said=said, status=status, title=title)
        if title
        else _("{said} ({status})").format(said=said, status=status)
    )
    if exits.for_http(status) == exits.RETRY_LATER:  # not a refusal: say so, and what to do
        detail = str(body.get("detail") or "")
        if not detail:
            return _("{head}; try again later").format(head=head)
        if detail.endswith(_("try again later")):  # the registry's own words say it already
            return _("{head}: {detail}").format(head=head, detail=detail)
        return _("{head}: {detail}; try again later").format(head=head, detail=detail)
    errors = body.get("errors") or []
    if not errors:
        detail = body.get("detail", "")
        return _("{head}: {detail}").format(head=head, detail=detail) if detail else head
    lines = [f"  - {e['msg']}" if _whole(e["loc"]) else f"  - {e['loc']}: {e['msg']}"
             for e in errors]  # fmt: skip
    # what was invalid, with its summary: "the CSV file (2 of 20 rows refused; nothing imported)";
    # the registry answers in our language (Accept-Language), so its own words mark the cut
    where = str(body.get("detail", "")).partition(_(" is invalid: "))[0]
    said = _("{head}: {where} is invalid:").format(head=head, where=where)
    return "\n".join([said if where else f"{head}:", *lines])


def segment(name: str) -> str:
    """A name typed by a person as one path segment: ``../tokens`` must stay a (wrong) name."""
    return urllib.parse.quote(name, safe="")


def _whole(loc: str) -> bool:
    # the registry's mark for "the whole document, no one field" (problems.whole)
    return loc.startswith("(") and loc.endswith(")")


def base_url(text: str, source: str) -> str:
    """The registry's base URL from what a person typed. ``http://`` is assumed when no scheme is
    given (``127.0.0.1:8080``); anything that is not then an http(s) address with a host and a
    valid port is ``BadOption``, naming ``source`` (``--url``, the environment) and what to set."""
    url = text.strip()
    if "://" not in url:
        url = "http://" + url
    fix = _("set {source} to an address like {url} or https://registry.example:8443").format(
        source=source, url=DEFAULT_URL
    )
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is what raises for a bad one
    except ValueError as exc:
        raise BadOption(_("{source} is {text!r}, not a URL ({why}): {fix}").format(
            source=source, text=text, why=exc, fix=fix)) from None  # fmt: skip
    if parts.scheme not in ("http", "https"):
        raise BadOption(_("{source} is {text!r}, not an http:// or https:// address: {fix}")
                        .format(source=source, text=text, fix=fix))  # fmt: skip
    if not parts.hostname:
        raise BadOption(_("{source} is {text!r}, which names no host: {fix}").format(
            source=source, text=text, fix=fix))  # fmt: skip
    if not all(c.isalnum() or c in "-._:%" for c in parts.hostname):  # ``ht!tp:/bad``
        raise BadOption(_("{source} is {text!r}, whose host {host!r} is no host name or "
                          "address: {fix}").format(source=source, text=text,
                                                   host=parts.hostname, fix=fix))  # fmt: skip
    return url.rstrip("/")


def url_of(args: argparse.Namespace) -> str:
    """``--url``, else ``GRIDWATCH_URL``, else the default; checked by ``base_url``."""
    if args.url is not None:
        return base_url(args.url, "--url")
    if os.environ.get(URL_ENV):
        return base_url(os.environ[URL_ENV], URL_ENV)
    return DEFAULT_URL


def _trusting(ca_file: str | None) -> ssl.SSLContext | bool:
    """The TLS check of the API: the system's CAs, or ``--ca-file``'s alone."""
    if not ca_file:
        return True
    try:
        return ssl.create_default_context(cafile=ca_file)
    except OSError as exc:  # ssl.SSLError too: a file that holds no certificate
        why = exc.strerror or str(exc)
        raise BadOption(_("--ca-file {file}: cannot use it ({why}); give the PEM file of "
                          "the CA that signed the registry's certificate").format(
                              file=ca_file, why=why)) from None  # fmt: skip


IMPORT_TIMEOUT_S = 600.0


class Api:
    def __init__(self, args: argparse.Namespace, token_env: str = TOKEN_ENV) -> None:
        self.base = url_of(args)
        self.token = getattr(args, "token", None) or os.environ.get(token_env, "")
        self.headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        # the registry's problems come back in the language this command speaks
        self.headers["Accept-Language"] = i18n.current().replace("_", "-")
        self.ssl = _trusting(getattr(args, "ca_file", None))

    async def __aenter__(self) -> Api:
        import aiohttp

        self.session = aiohttp.ClientSession(
            headers=self.headers, timeout=aiohttp.ClientTimeout(total=30)
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, **kw: Any) -> Any:
        import aiohttp

        try:
            async with self.session.request(method, self.base + path, ssl=self.ssl, **kw) as r:
                text = await r.text()
                try:
                    body = json.loads(text) if text else None
                except ValueError:
                    body = text
                if r.status == 401:
                    raise Refused(401, body, self._token_problem())
                if r.status >= 400:
                    raise Refused(r.status, body)
                return body
        except (aiohttp.ClientError, TimeoutError) as exc:
            # every way the registry cannot be talked to (refused, no such host, TLS, a URL
            # aiohttp will not take, an answer cut off): one line, never a traceback
            why = str(exc) or type(exc).__name__
            raise Unreachable(_("the registry at {url} cannot be reached: {why}").format(
                url=self.base, why=why)) from exc  # fmt: skip

    def _token_problem(self) -> str:
        if not self.token:
            return _("no API token: {hint}").format(hint=token_hint())
        return _("the registry at {url} does not know this API token (mistyped, or revoked): "
                 "{hint}").format(url=self.base, hint=token_hint())  # fmt: skip


# ---- commands -------------------------------------------------------------------------------


def _kv(pairs: Sequence[str], what: str) -> dict[str, str]:
    out = {}
    for pair in pairs:
        for part in pair.split(","):
            key, eq, value = part.partition("=")
            if not eq:
                raise BadOption(_("{what} must be key=value, got {part!r}").format(
                    what=what, part=part))  # fmt: skip
            out[key.strip()] = value.strip()
    return out


def _bus(spec: str) -> dict[str, Any]:
    bus: dict[str, Any] = _kv([spec], "--bus")
    for key in ("port", "baudrate", "max_concurrency", "stopbits", "bytesize"):
        if key in bus and bus[key].isdigit():
            bus[key] = int(bus[key])
    if "timeout_s" in bus:
        bus["timeout_s"] = float(bus["timeout_s"])
    return bus


def _loc(args: argparse.Namespace) -> dict[str, Any]:
    loc = {k: getattr(args, k) for k in ("district", "street", "grid", "lat", "lon")}
    return {k: v for k, v in loc.items() if v is not None}


VERSIONS_ONLY = N_(
    "    the registry knows config versions, not what the box holds: a config copied onto the box "
    "with the same version looks the same here (`gridwatch edge status` on the box names the "
    "file it runs)"
)


def config_said(cfg: dict[str, Any]) -> str:
    """A gateway's config as far as the registry knows it: the version it issued, what the box
    acknowledged of it, and the version the box's last Birth says it runs. Versions only."""
    desired, acked, accepted = cfg["desired"], cfg["acknowledged"], cfg["accepted"]
    running = cfg.get("running")  # an older registry does not say
    if acked == 0:
        said = _("never acknowledged")
    elif accepted is True:
        said = _("the box accepted v{version}").format(version=acked)
    elif accepted is False:
        said = _("the box REJECTED v{version}").format(version=acked)
    else:
        said = _("the box acknowledged v{version}").format(version=acked)
    if not running:
        said += _("; the box has not said which version it runs")
    elif running > desired:
        said += _("; the box runs v{version}, newer than this registry's: a config not from it"
                  ).format(version=running)  # fmt: skip
    else:  # a number: whether it is this registry's config, only the box can tell
        said += _("; the box runs v{version}").format(version=running)
    return _("config v{version}: {said}").format(version=desired, said=said)


def _print_gateway(gw: dict[str, Any], detail: bool = False) -> None:
    cfg = gw.get("config") or {}
    state = gw.get("status") or (  # an older registry: no status, the flags alone
        "retired" if gw.get("retired") else "online" if gw.get("online") else "offline"
    )
    loc = gw.get("location") or {}
    print(_("{id:<24} {state:<15} devices {devices:<5} {district}/{grid}").format(
        id=gw["id"], state=said_state(state), devices=gw["devices"],
        district=loc.get("district", "-"), grid=loc.get("grid", "-")), end="")  # fmt: skip
    if gw.get("name"):  # as `gateway add|edit --name` set it
        print(f"  {gw['name']!r}", end="")
    if cfg:
        print(f"  {config_said(cfg)}", end="")
    print()
    for err in cfg.get("errors", []):
        print(_("    config error: {error}").format(error=err))
    if cfg and detail:
        print(_(VERSIONS_ONLY))


# a gateway's or device's state as the registry names it -> as a person reads it
STATES = {
    "online": N_("online"),
    "offline": N_("offline"),
    "retired": N_("retired"),
    "never_connected": N_("never connected"),
    "stale": N_("stale"),
    "new": N_("new"),
    "silent": N_("silent"),
    "unknown": N_("unknown"),
    "not_ingesting": N_("not ingesting"),
    "degraded": N_("degraded"),
    "down": N_("down"),
}


def said_state(state: str) -> str:
    """A state in the command's language; one the table does not know, as the registry said it."""
    return _(STATES[state]) if state in STATES else state.replace("_", " ")


def shown(value: Any, decimals: int | None) -> str:
    """A value as a person reads it: at its point's decimals (the API's ``decimals``, from the
    profile), so a float32 2.9 read as 2.896005 shows 2.90; '-' for none; on/off and text as
    they are. The API keeps the full value; only the printed text is rounded."""
    if value is None:
        return "-"
    if decimals is not None and isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value:.{decimals}f}"
    return str(value)


def _print_device(d: dict[str, Any], values: bool = False) -> None:
    state = said_state("retired" if d.get("retired") else d["status"])
    print(f"{d['id']:<32} {state:<8} {d.get('profile') or '-':<26} "
          f"{d.get('district') or '-'}/{d.get('grid') or '-'}")  # fmt: skip
    if values:
        print(f"    {_coordinates(d)}")
        if d.get("place"):
            print(f"    place: {_place(d['place'])}")
        for line in _component(d):
            print(f"    {line}")
        for point, v in sorted(d.get("values", {}).items()):
            value = shown(v["value"], v.get("decimals"))
            print(f"    {point:<16} {value:>12} {v['unit']:<6} {v['quality']}")


_DEPARTMENTS = (("dept_competent", "主管 competent"), ("dept_owner", "权属 owner"),
                ("dept_maintainer", "养护 maintainer"))  # fmt: skip


def _place(p: dict[str, Any]) -> str:
    """'徐汇区 徐家汇街道 漕溪北路 310104014024001 (area class A)': the names the places data
    gives, else the codes as registered."""
    district, street = p.get("district") or {}, p.get("street") or {}
    words = (district.get("zh") or district.get("code"), street.get("zh"), p.get("road"),
             p.get("grid"))  # fmt: skip
    return f"{' '.join(w for w in words if w) or 'none registered'} (area class {p['area_class']})"


def _component(d: dict[str, Any]) -> list[str]:
    """The city component (部件) a device is attached to, and its departments."""
    cid = d.get("component_id")
    lines = [f"component 部件: {cid} (class {d.get('class_code') or cid[6:10]})" if cid else
             "component 部件: none attached"]  # fmt: skip
    for key, title in _DEPARTMENTS:
        dept = d.get(key)
        if dept:
            lines.append(f"{title}: {dept['code']} {dept.get('name', '')}".rstrip())
    return lines


def _coordinates(d: dict[str, Any]) -> str:
    if d.get("lat") is None and d.get("lon") is None:
        return _("coordinates: none registered")
    whose = {"device": _("its own"), "site": _("its site's, a guess: it has none of its own")}
    return _("coordinates: {lat}, {lon} ({whose})").format(
        lat=d.get("lat"), lon=d.get("lon"), whose=whose.get(d.get("coordinates", ""), "")
    )


async def _gateway(args: argparse.Namespace, api: Api) -> int:
    if args.sub == "add":
        body = {"id": args.id, "name": args.name, "location": _loc(args),
                "buses": [_bus(b) for b in args.bus], "labels": _kv(args.label, "--label")}  # fmt: skip
        gw = await api.call("POST", "/api/v1/gateways", json=body)
        _print_issued(gw, args.json)
        for bus in body["buses"]:
            if bus.get("type") == "mqtt" and "host" not in bus:
                print(_("note: mqtt bus {bus!r} reads the sensors' field broker at "
                        "127.0.0.1:{port}, on the gateway itself; give host=... (and port=...) "
                        "when that broker runs elsewhere").format(
                            bus=bus.get("id"), port=bus.get("port", 1883)),
                      file=sys.stderr)  # fmt: skip
        if args.write_config:
            doc, text = await _config(api, args.id)
            await asyncio.to_thread(Path(args.write_config).write_text, text)
            print(_("config v{version} written to {file}").format(
                version=doc["version"], file=args.write_config))  # fmt: skip
        return OK
    if args.sub == "config":
        doc, text = await _config(api, args.id)
        sys.stdout.write(json.dumps(doc, indent=2) + "\n" if args.json else text)
        return OK
    if args.sub == "edit":
        return await edit_gateway(args, api)
    if args.sub == "list":
        q = {"district": args.district} if args.district else {}
        q["retired"] = "any" if args.all else "false"  # a retired gateway is history
        gws = await api.call("GET", "/api/v1/gateways", params=q)
        if args.json:
            print(json.dumps(gws, indent=2))
        for gw in [] if args.json else gws:
            _print_gateway(gw)
        if not gws and not args.json:
            print(_no_gateways(args.district, args.all))
        return OK
    if args.sub == "new-password":
        _print_issued(await api.call("POST", f"/api/v1/gateways/{args.id}/credentials"), args.json)
        return OK
    path = f"/api/v1/gateways/{args.id}" + ("/retire" if args.sub == "retire" else "")
    gw = await api.call("POST" if args.sub == "retire" else "GET", path)
    print(json.dumps(gw, indent=2)) if args.json else _print_gateway(gw, detail=True)
    return OK


def _no_gateways(district: str | None, retired_too: bool) -> str:
    if retired_too:
        return (_("no gateways in {district}").format(district=district) if district
                else _("no gateways"))  # fmt: skip
    if district:
        return _("no live gateways in {district} (--all shows retired ones too)").format(
            district=district
        )
    return _("no live gateways (--all shows retired ones too)")


async def _config(api: Api, gateway: str) -> tuple[dict[str, Any], str]:
    """The gateway's current config as the registry generates it, and as YAML for its box."""
    import yaml

    doc = await api.call("GET", f"/api/v1/gateways/{segment(gateway)}/config")
    return doc, yaml.safe_dump(doc, sort_keys=False)


async def edit_gateway(args: argparse.Namespace, api: Api) -> int:
    """Name, location and labels through the gateway; a bus's settings through the bus. Given
    parts of a location or labels are merged into what the gateway has."""
    bus = {k: getattr(args, k) for k in _BUS_SETTINGS if getattr(args, k) is not None}
    if isinstance(bus.get("port"), str) and bus["port"].isdigit():
        bus["port"] = int(bus["port"])
    loc, labels = _loc(args), _kv(args.label, "--label")
    if bus and args.bus is None:
        return _usage(_("{options}: name the bus to change with --bus ID").format(
            options=", ".join("--" + k.removesuffix("_s") for k in bus)))  # fmt: skip
    if args.bus is not None and not bus:
        return _usage(_("--bus {bus}: say what to change (--timeout, --host, --port, ...)")
                      .format(bus=args.bus))  # fmt: skip
    if args.name is None and not loc and not labels and args.bus is None:
        return _usage(_("nothing to change: give --name, a location (--district, --street, "
                        "--grid, --lat, --lon), --label, or --bus ID with its settings"))  # fmt: skip
    patch: dict[str, Any] = {} if args.name is None else {"name": args.name}
    if loc or labels:
        now = await api.call("GET", f"/api/v1/gateways/{quote(args.id, safe='')}")
        here = dict(now.get("location") or {})
        if now.get("coordinates") != "gateway":  # its site's stand-in, not its own
            here = {k: v for k, v in here.items() if k not in ("lat", "lon")}
        if loc:
            patch["location"] = {**here, **loc}
        if labels:
            patch["labels"] = {**(now.get("labels") or {}), **labels}
    gw_path = f"/api/v1/gateways/{quote(args.id, safe='')}"
    gw = await api.call("PATCH", gw_path, json=patch) if patch else None
    if args.bus is not None:
        gw = await api.call("PATCH", f"{gw_path}/buses/{quote(args.bus, safe='')}", json=bus)
    assert gw is not None
    if args.json:
        print(json.dumps(gw, indent=2))
        return OK
    _print_gateway(gw)
    print(_("config v{version} goes to the gateway now (see it arrive: gridwatch gateway "
            "show {id})").format(version=(gw.get("config") or {}).get("desired", "?"),
                                 id=args.id))  # fmt: skip
    return OK


def _usage(message: str) -> int:
    print(f"gridwatch gateway edit: {message}", file=sys.stderr)
    return USAGE


def _print_issued(gw: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(gw, indent=2))
        return
    _print_gateway(gw)
    print(_("MQTT username: {username}").format(username=gw["mqtt"]["username"]))
    print(_("MQTT password: {password}   (shown once: put it in the gateway's environment as "
            "GRIDWATCH_MQTT_PASSWORD)").format(password=gw["mqtt"]["password"]))  # fmt: skip


async def _device(args: argparse.Namespace, api: Api) -> int:
    if args.sub == "add":
        body: dict[str, Any] = {"gateway": args.gateway, "id": args.id, "profile": args.profile,
                                "bus": args.bus, "location": _loc(args),
                                "labels": _kv(args.label, "--label")}  # fmt: skip
        for key in ("unit_id", "address", "install_date", "firmware", "component_id"):
            if getattr(args, key) is not None:
                body[key] = getattr(args, key)
        for dept in DEPARTMENTS:
            if getattr(args, f"dept_{dept}") is not None:
                body[f"dept_{dept}"] = department_cell(getattr(args, f"dept_{dept}"))
        dev = await api.call("POST", "/api/v1/devices", json=body)
        print(json.dumps(dev, indent=2)) if args.json else _print_device(dev)
        return OK
    if args.sub == "import":
        import aiohttp

        text = await asyncio.to_thread(Path(args.file).read_text, encoding="utf-8")
        # 50,000 rows take seconds to check and write, more than the 30 s of the other calls
        # on a busy registry
        result = await api.call("POST", "/api/v1/devices/import", data=text.encode(),
                                headers={"Content-Type": "text/csv"},
                                timeout=aiohttp.ClientTimeout(total=IMPORT_TIMEOUT_S))  # fmt: skip
        print(
            json.dumps(result, indent=2)
            if args.json
            else _("imported {count} devices").format(count=result["imported"])
        )
        return OK
    if args.sub == "list":
        q = {k: getattr(args, k) for k in ("gateway", "district", "grid", "profile", "status",
                                           "retired", "limit") if getattr(args, k) is not None}  # fmt: skip
        devices = await api.call("GET", "/api/v1/devices", params={k: str(v) for k, v in q.items()})
        if args.json:
            print(json.dumps(devices, indent=2))
        for d in [] if args.json else devices:
            _print_device(d)
        asked = {k: v for k, v in q.items() if k not in ("retired", "limit")}
        if not devices and asked:  # a mistyped filter is not "all is well" (docs/cli.md: 1)
            said = _(" and ").join(f"{k} {v!r}" for k, v in asked.items())
            print(_("gridwatch device list: no device matches {filters}").format(filters=said),
                  file=sys.stderr)  # fmt: skip
            return FAILED
        return OK
    if args.sub == "commission":
        return await commission(api, args.id, args.timeout)
    if args.sub == "command":
        return await command(api, args.id, args.point, args.value, args.timeout)
    path = f"/api/v1/devices/{args.id}" + ("/retire" if args.sub == "retire" else "")
    dev = await api.call("POST" if args.sub == "retire" else "GET", path)
    print(json.dumps(dev, indent=2)) if args.json else _print_device(dev, values=True)
    return OK


async def _wait(api: Api, path: str, done: Any, within_s: float, what: str) -> Any:
    """Poll ``path`` until ``done(body)``, a progress line on stderr meanwhile."""
    start = time.monotonic()
    spinner = "|/-\\"
    i = 0
    while True:
        body = await api.call("GET", path)
        if done(body):
            if sys.stderr.isatty():
                print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
            return body
        elapsed = time.monotonic() - start
        if elapsed > within_s:
            return None
        end = "\r" if sys.stderr.isatty() else "\n"
        if sys.stderr.isatty() or i % 5 == 0:
            said = _("{what} ({elapsed:.0f}s of {within:.0f}s)").format(
                what=what, elapsed=elapsed, within=within_s)  # fmt: skip
            print(f"{spinner[i % 4]} {said}", end=end, file=sys.stderr, flush=True)
        i += 1
        await asyncio.sleep(1.0)


async def commission(api: Api, device: str, timeout: float) -> int:  # noqa: ASYNC109 - a poll budget
    dev = await _wait(api, f"/api/v1/devices/{device}", lambda d: bool(d.get("values")),
                      timeout, _("waiting for the first readings of {device}").format(
                          device=device))  # fmt: skip
    if dev is None:
        print(_("{device}: no readings within {timeout:.0f}s. Check the wiring, the unit id / "
                "address, the bus settings, and that its gateway is online "
                "(gridwatch gateway show GATEWAY).").format(device=device, timeout=timeout))  # fmt: skip
        return FAILED
    points = _profile_points(dev.get("profile"))
    print(_("{device} ({profile}) reports:").format(
        device=dev["id"], profile=dev.get("profile") or _("no profile")))  # fmt: skip
    healthy = True
    for name, v in sorted(dev["values"].items()):
        notes = check_reading(points.get(name), v["value"], v["quality"])
        healthy &= not notes
        value = shown(v["value"], v.get("decimals"))
        print(f"  {name:<16} {value:>14} {v['unit']:<6} {v['quality']:<12} {'; '.join(notes)}")
    alarms = dev.get("active_alerts") or []
    for a in alarms:
        # an alert's value is its point's: shown at the decimals of that point's latest value
        decimals = (dev["values"].get(a["point"]) or {}).get("decimals")
        value = "-" if a["value"] is None else f"{shown(a['value'], decimals)} {a['unit']}".rstrip()
        print(_("  IN ALARM: {severity} {category} on {point}: {message}: {value}").format(
            severity=a["severity"], category=a["category"], point=a["point"],
            message=a["message"] or a["category"], value=value))  # fmt: skip
    if not healthy:
        print(_("NOT commissioned: see the notes above"))
    elif alarms:
        # the wiring reads true, and what it reads is an alarm: the installer must know that
        # before leaving the site, not learn it from the operations centre
        n = _("1 alert") if len(alarms) == 1 else _("{n} alerts").format(n=len(alarms))
        print(_("commissioned: every value reads correctly, but the device is in alarm ({n} "
                "above): confirm on site whether it is real").format(n=n))  # fmt: skip
    else:
        print(_("commissioned: every value is good, no alert active"))
    return OK if healthy else FAILED


async def command(api: Api, device: str, point: str, text: str, timeout: float) -> int:  # noqa: ASYNC109
    value: Any = {"true": True, "false": False}.get(text.lower())
    if value is None:
        try:
            value = float(text) if "." in text else int(text)
        except ValueError:
            raise BadOption(_("value must be true, false or a number, got {text!r}").format(
                text=text)) from None  # fmt: skip
    sent = await api.call("POST", f"/api/v1/devices/{device}/commands",
                          json={"point": point, "value": value})  # fmt: skip
    done = await _wait(api, f"/api/v1/commands/{sent['id']}", lambda c: c["state"] != "sent",
                       timeout, _("waiting for the result of command {id}").format(
                           id=sent["id"]))  # fmt: skip
    if done is None:
        print(_("command {id}: no result within {timeout:.0f}s (is the gateway online?)").format(
            id=sent["id"], timeout=timeout))  # fmt: skip
        return FAILED
    print(_("command {id} {device}.{point}={value}: {state} {error}").format(
        id=done["id"], device=device, point=point, value=value, state=done["state"],
        error=done["error"] or "").rstrip())  # fmt: skip
    return OK if done["state"] == "ok" else FAILED


# ---- the byte-order check (pure) ------------------------------------------------------------


@dataclass(frozen=True)
class Alternative:
    layout: str
    value: float


def _profile_points(profile: str | None) -> dict[str, Any]:
    from gridwatch.ground.gatewayconf import default_profiles_dir
    from gridwatch.ground.profiles import ModbusProfile, load_profiles

    prof = load_profiles(default_profiles_dir()).get(profile or "")
    return dict(prof.points) if isinstance(prof, ModbusProfile) else {}


def _plausible(v: float, lo: float, hi: float) -> bool:
    return math.isfinite(v) and lo <= v <= hi and (v == 0 or 1e-4 <= abs(v) < 1e9)


def byte_order_alternatives(point: Any, value: float) -> list[Alternative]:
    """The value read under every other register/byte layout; [] for single-register points."""
    from drivers.codec import ORDERS, TYPES, compile_point, decode_raw

    if (
        point.data_type not in TYPES
        or TYPES[point.data_type][1] < 2
        or point.table in ("coil", "discrete")
    ):
        return []
    words = compile_point(point).encode_raw((value - point.offset) / point.scale)
    out = []
    for label, byte_order, word_order in ORDERS:
        if (byte_order, word_order) == (point.byte_order, point.word_order):
            continue
        raw = decode_raw(words, point.data_type, byte_order, word_order)
        out.append(Alternative(label, raw * point.scale + point.offset))
    return out


def check_reading(point: Any, value: Any, quality: str) -> list[str]:
    """What an installer should look at in one reading (empty: it looks right)."""
    notes = [] if quality == "good" else [_("quality {quality}").format(quality=quality)]
    if point is None or not isinstance(value, int | float) or isinstance(value, bool):
        if quality in ("out_of_range", "invalid") and point is not None and point.data_type in (
            "float32", "float64", "int32", "uint32", "int64", "uint64"):  # fmt: skip
            notes.append(_("a multi-register value out of range: check byte/word order "
                           "(gridwatch probe modbus --address {address} shows every order)")
                         .format(address=point.address))  # fmt: skip
        return notes
    lo = point.range.min if point.range and point.range.min is not None else -math.inf
    hi = point.range.max if point.range and point.range.max is not None else math.inf
    if _plausible(float(value), lo, hi):
        return notes
    better = [
        a for a in byte_order_alternatives(point, float(value)) if _plausible(a.value, lo, hi)
    ]
    if better:
        alts = ", ".join(
            _("{layout} would read {value:.6g}").format(layout=a.layout, value=a.value)
            for a in better
        )
        notes.append(_("looks like a byte-order mistake: {alternatives}").format(alternatives=alts))
    else:
        notes.append(_("implausible value"))
    return notes


# ---- entry point ----------------------------------------------------------------------------


async def _run(args: argparse.Namespace) -> int:
    async with Api(args) as api:
        return await (_gateway(args, api) if args.cmd == "gateway" else _device(args, api))


def main(args: argparse.Namespace) -> int:
    return run_api(_run, args)


def run_api(
    run: Callable[[argparse.Namespace], Coroutine[Any, Any, int]], args: argparse.Namespace
) -> int:
    """Run ``run(args)`` (a coroutine function that talks to the registry); every failure a
    person can cause or meet is one line on stderr and an exit code, never a traceback."""
    try:
        result: int = asyncio.run(run(args))
        return result
    except BadOption as exc:
        print(f"gridwatch: {exc}", file=sys.stderr)
        return USAGE
    except Refused as exc:
        print(f"gridwatch: {exc}", file=sys.stderr)
        return exits.for_http(exc.status)
    except Unreachable as exc:
        print(f"gridwatch: {exc}", file=sys.stderr)
        return exits.RETRY_LATER
    except BrokenPipeError:  # our reader went away (`| head`): cli.main ends quietly
        raise
    except OSError as exc:  # a CSV or config file that cannot be read or written
        print(f"gridwatch: {exc}", file=sys.stderr)
        return FAILED
