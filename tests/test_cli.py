"""The ``gridwatch`` command as people meet it: run as its own process against a real registry
(aiohttp on SQLite), against ports nobody listens on, hosts that do not exist, a server that
hangs up, and URLs that are no URLs. Whatever happens, one line says what to do, the exit code
says what kind of failure it was, and no traceback is ever printed.

Also: the registry commands beyond installing (gateway config, profiles, tokens, alerts), the
token messages, each 422 said once and in plain words, and installers reading health.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from device_registry import Changes
from device_registry.http import problems
from device_registry.http.auth import Role
from gridwatch.ground.contract import AlertState, Reading
from gridwatch.top.installer import DEFAULT_URL, BadOption, Refused, base_url, shown
from gridwatch.top.registrycli import alert_subject
from tests._ops_helpers import Registry, now_ms, parked, registry, smoke
from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
OK, FAILED, USAGE, UNREACHABLE, REFUSED = 0, 1, 2, 3, 4  # docs/cli.md: 3 is "retry later"


@dataclass
class Ran:
    code: int
    out: str
    err: str


async def gridwatch(*argv: str, token: str | None = None, url_env: str | None = None) -> Ran:
    """``gridwatch ARGV`` as its own process; no token or URL from this test's environment."""
    env = {k: v for k, v in os.environ.items() if k not in ("GRIDWATCH_TOKEN", "GRIDWATCH_URL")}
    env["PYTHONPATH"] = str(ROOT)
    if token is not None:
        env["GRIDWATCH_TOKEN"] = token
    if url_env is not None:
        env["GRIDWATCH_URL"] = url_env
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gridwatch.top.cli", *argv, env=env, cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    ran = Ran(proc.returncode or 0, out.decode(), err.decode())
    assert "Traceback" not in ran.out + ran.err, ran
    return ran


@pytest.fixture
async def reg(tmp_path: Path) -> AsyncIterator[Registry]:
    async with registry(tmp_path) as r:
        yield r


# ---- the URL (pure) ----------------------------------------------------------------------------

URLS = [
    # (typed, the base URL used, or the words of the one-line error)
    ("http://127.0.0.1:8080", "http://127.0.0.1:8080", None),
    ("https://registry.city.example:8443/", "https://registry.city.example:8443", None),
    ("127.0.0.1:8080", "http://127.0.0.1:8080", None),  # no scheme: http:// assumed
    ("registry.city.example", "http://registry.city.example", None),
    ("  localhost:8080 ", "http://localhost:8080", None),
    ("http://[::1]:8080", "http://[::1]:8080", None),
    ("ftp://x", None, "not an http:// or https:// address"),
    ("http://[::1", None, "not a URL"),
    ("http://127.0.0.1:99999", None, "not a URL"),
    ("localhost:abc", None, "not a URL"),
    ("http://", None, "names no host"),
    ("", None, "names no host"),
    ("ht!tp:/bad", None, "whose host 'ht!tp' is no host name or address"),
    ("http://注册中心.example:8080", "http://注册中心.example:8080", None),
]


@pytest.mark.parametrize(("typed", "base", "words"), URLS)
def test_base_url(typed: str, base: str | None, words: str | None) -> None:
    if base is not None:
        assert base_url(typed, "--url") == base
        return
    with pytest.raises(BadOption) as err:
        base_url(typed, "GRIDWATCH_URL")
    assert words is not None and words in str(err.value)
    assert "set GRIDWATCH_URL to an address like http://127.0.0.1:8080" in str(err.value)


# ---- never a traceback -------------------------------------------------------------------------


async def _hangs_up() -> tuple[asyncio.Server, int]:
    """A server that accepts and closes at once: an answer that never comes."""

    async def close(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    server = await asyncio.start_server(close, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


COMMANDS = [  # one of each module's way to the registry: installer, health, registrycli
    ["gateway", "config", "gw1"],
    ["health"],
    ["token", "create", "--role", "installer"],
    ["alert", "file", "a1", "--note", "crew 7"],
]


async def test_no_url_or_failure_ever_prints_a_traceback(reg: Registry) -> None:
    server, hangs_up = await _hangs_up()
    refused = free_port()  # nobody listens there
    plain = reg.url.removeprefix("http://")
    cases = [
        # (URL, how it is given, exit code, words on stderr)
        (f"http://127.0.0.1:{refused}", "--url", UNREACHABLE, "cannot be reached"),
        (f"127.0.0.1:{refused}", "env", UNREACHABLE, f"http://127.0.0.1:{refused} cannot be"),
        ("http://no-such-host.invalid:8080", "--url", UNREACHABLE, "cannot be reached"),
        (f"http://127.0.0.1:{hangs_up}", "--url", UNREACHABLE, "cannot be reached"),
        (f"https://{plain}", "--url", UNREACHABLE, "cannot be reached"),  # TLS to plain HTTP
        ("ftp://registry", "env", USAGE, "GRIDWATCH_URL is 'ftp://registry'"),
        ("http://[::1", "--url", USAGE, "--url is 'http://[::1', not a URL"),
        ("http://127.0.0.1:99999", "--url", USAGE, "not a URL"),
        ("http://", "env", USAGE, "names no host"),
        ("ht!tp:/bad", "--url", USAGE, "--url is 'ht!tp:/bad', whose host"),
        (reg.url, "no CA file", USAGE, "--ca-file /nonexistent/ca.pem: cannot use it"),
        (reg.url, "not a CA", USAGE, "--ca-file README.md: cannot use it"),
    ]
    try:
        for url, given, code, words in cases:
            flag = {"--url": ["--url", url], "env": [],
                    "no CA file": ["--url", url, "--ca-file", "/nonexistent/ca.pem"],
                    "not a CA": ["--url", url, "--ca-file", "README.md"]}[given]  # fmt: skip
            env = url if given == "env" else None
            runs = [gridwatch(*argv, *flag, token="t", url_env=env) for argv in COMMANDS]
            for argv, ran in zip(COMMANDS, await asyncio.gather(*runs), strict=True):
                assert ran.code == code, (url, argv, ran)
                assert words in ran.err and ran.err.count("\n") == 1, (url, argv, ran)
    finally:
        server.close()


async def test_a_url_without_a_scheme_is_taken_as_http(reg: Registry) -> None:
    plain = reg.url.removeprefix("http://")
    for given in ({"url_env": plain}, {}):
        argv = ["gateway", "list", "--json", *([] if given else ["--url", plain])]
        ran = await gridwatch(*argv, token=reg.tokens[Role.INSTALLER], **given)
        assert ran.code == OK and json.loads(ran.out) == [], ran


async def test_the_default_url_is_documented_where_people_look() -> None:
    ran = await gridwatch("gateway", "list", "--help")
    assert DEFAULT_URL in ran.out and "GRIDWATCH_URL" in ran.out
    for doc in ("README.md", "docs/registry.md"):
        assert DEFAULT_URL in (ROOT / doc).read_text(encoding="utf-8"), doc


# ---- tokens ------------------------------------------------------------------------------------


async def test_missing_or_rejected_token_says_what_to_set(reg: Registry) -> None:
    hint = "set GRIDWATCH_TOKEN or use --token; an admin creates one with `gridwatch token create"
    for argv in (["gateway", "list"], ["health"], ["alert", "list"]):
        missing = await gridwatch(*argv, "--url", reg.url)
        assert missing.code == REFUSED and "no API token: " + hint in missing.err
        assert "Authorization" not in missing.err, missing
        wrong = await gridwatch(*argv, "--url", reg.url, token="not-a-token")
        assert "does not know this API token" in wrong.err and hint in wrong.err, wrong
        assert wrong.code == REFUSED, wrong
        assert wrong.err.count("\n") == 1, wrong


async def test_an_admin_creates_a_token_that_works(reg: Registry) -> None:
    ran = await gridwatch("token", "create", "--role", "installer", "--name", "anna",
                          "--url", reg.url, token=reg.tokens[Role.ADMIN])  # fmt: skip
    assert ran.code == OK and "'anna', role installer" in ran.out, ran
    token = ran.out.splitlines()[1]
    listed = await gridwatch("gateway", "list", "--url", reg.url, token=token)
    assert listed.code == OK, listed
    # an installer cannot make tokens: refused, in the registry's words, once
    refused = await gridwatch("token", "create", "--role", "admin", "--url", reg.url, token=token)
    assert refused.code == REFUSED and "403" in refused.err, refused


# ---- errors said once, in plain words ----------------------------------------------------------

PLAIN = [
    # (pydantic's message, as people read it)
    ("Value error, stage must be among reported,filed", "stage must be among reported,filed"),
    ("Assertion failed, timeout must be below interval", "timeout must be below interval"),
    ("Field required", "Field required"),
    ("a Value error, in the middle stays", "a Value error, in the middle stays"),
]


@pytest.mark.parametrize(("said", "read"), PLAIN)
def test_plain_messages(said: str, read: str) -> None:
    assert problems.plain(said) == read


@pytest.mark.parametrize(
    ("loc", "whole"), [("(body)", True), ("(top level)", True), ("location.grid", False),
                       ("line 4 (gw1:wl-22).unit_id", False)],
)  # fmt: skip
def test_whole_document_locations(loc: str, whole: bool) -> None:
    assert problems.whole(loc) is whole


async def test_each_field_error_is_said_once_in_plain_words(reg: Registry) -> None:
    ran = await gridwatch("gateway", "add", "gw1", "--url", reg.url,
                          "--bus", "type=modbus_tcp,id=cab,host=10.0.0.5,port=abc",
                          token=reg.tokens[Role.INSTALLER])  # fmt: skip
    assert ran.code == REFUSED, ran
    assert ran.err.count("buses.0.modbus_tcp.port") + ran.err.count("buses.0.port") == 1, ran.err
    # a validator's own words, without pydantic's "Value error," and no field for a whole query
    bad = await gridwatch("alert", "list", "--stage", "bogus", "--url", reg.url,
                          token=reg.tokens[Role.OPERATOR])  # fmt: skip
    assert bad.code == REFUSED and bad.err.count("stage must be among") == 1, bad
    assert "Value error" not in bad.err, bad
    status, body = await reg.call("GET", "/api/v1/alerts/lifecycle?stage=bogus", Role.OPERATOR)
    assert status == 422 and "Value error" not in json.dumps(body), body
    assert body["detail"].startswith("the query string is invalid: stage: stage must be among")
    # a problem of the whole generated config: a sentence, not "(top level): Value error, ..."
    status, _ = await reg.call("POST", "/api/v1/gateways", Role.INSTALLER, {"id": "gw1"})
    assert status == 201
    dev = await gridwatch("device", "add", "gw1", "wl-1", "--profile", "water-level-ultrasonic",
                          "--bus", "nope", "--unit-id", "1", "--url", reg.url,
                          token=reg.tokens[Role.INSTALLER])  # fmt: skip
    assert dev.code == REFUSED and "'nope'" in dev.err and dev.err.count("\n") == 2, dev
    assert "(top level)" not in dev.err and "Value error" not in dev.err, dev


# ---- the commands ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "decimals", "text"),
    [
        (2.896005, 2, "2.90"),  # float32 noise past the sensor's resolution
        (2.896005, 0, "3"),
        (2.896005, None, "2.896005"),  # no profile known: as it came
        (12, 2, "12.00"),
        (True, 0, "True"),  # on/off is never a number to round
        ("OK", 2, "OK"),
        (None, 2, "-"),
    ],
)
def test_values_are_shown_at_their_points_decimals(
    value: object, decimals: int | None, text: str
) -> None:
    assert shown(value, decimals) == text


async def test_device_show_and_commission_round_for_people_not_for_the_api(reg: Registry) -> None:
    bus = {"type": "modbus_tcp", "id": "cabinet", "host": "10.0.0.5", "port": 502}
    status, _ = await reg.call("POST", "/api/v1/gateways", Role.INSTALLER,
                               {"id": "gw1", "buses": [bus]})  # fmt: skip
    assert status == 201
    status, _ = await reg.call("POST", "/api/v1/devices", Role.INSTALLER,
                               {"gateway": "gw1", "id": "wl-1", "bus": "cabinet", "unit_id": 1,
                                "profile": "water-level-pressure"})  # fmt: skip
    assert status == 201
    now = now_ms()
    ch = Changes(now=now)
    for point, value, unit in (("level", 2.896005, "m"), ("alarm", True, "")):
        ch.latest[("gw1", "wl-1", point)] = Reading(device="wl-1", point=point, value=value,
                                                     unit=unit, ts=now)  # fmt: skip
    ch.device_seen[("gw1", "wl-1")] = now
    await reg.store.apply(ch)
    # the API keeps the full value and says how it is shown
    status, dev = await reg.call("GET", "/api/v1/devices/gw1:wl-1", Role.MAINTENANCE)
    assert status == 200 and dev["values"]["level"]["value"] == 2.896005
    assert dev["values"]["level"]["decimals"] == 2
    assert dev["values"]["alarm"]["decimals"] is None  # on/off
    token = reg.tokens[Role.INSTALLER]
    ran = await gridwatch("device", "show", "gw1:wl-1", "--url", reg.url, token=token)
    assert ran.code == OK and "2.90 m" in " ".join(ran.out.split()), ran
    assert "2.896005" not in ran.out
    raw = await gridwatch("device", "show", "gw1:wl-1", "--json", "--url", reg.url, token=token)
    assert json.loads(raw.out)["values"]["level"]["value"] == 2.896005
    com = await gridwatch("device", "commission", "gw1:wl-1", "--timeout", "5", "--url", reg.url,
                          token=token)  # fmt: skip
    assert "2.90 m" in " ".join(com.out.split()) and "2.896005" not in com.out, com


async def test_gateway_config_prints_the_current_config(reg: Registry) -> None:
    bus = {"type": "modbus_tcp", "id": "cabinet", "host": "10.0.0.5", "port": 502}
    status, _ = await reg.call("POST", "/api/v1/gateways", Role.INSTALLER,
                               {"id": "gw1", "location": {"district": "310104"}, "buses": [bus]})  # fmt: skip
    assert status == 201
    status, _ = await reg.call("POST", "/api/v1/devices", Role.INSTALLER,
                               {"gateway": "gw1", "id": "wl-1", "bus": "cabinet", "unit_id": 1,
                                "profile": "water-level-ultrasonic"})  # fmt: skip
    assert status == 201
    ran = await gridwatch("gateway", "config", "gw1", "--url", reg.url,
                          token=reg.tokens[Role.MAINTENANCE])  # fmt: skip
    assert ran.code == OK, ran
    status, served = await reg.call("GET", "/api/v1/gateways/gw1/config", Role.INSTALLER)
    assert yaml.safe_load(ran.out) == served and served["devices"][0]["id"] == "wl-1"
    assert served["version"] == 2  # registered, then a device added: the current one
    missing = await gridwatch("gateway", "config", "nope", "--url", reg.url,
                              token=reg.tokens[Role.INSTALLER])  # fmt: skip
    assert missing.code == FAILED and "no gateway 'nope'" in missing.err, missing


async def test_profile_list_and_show(reg: Registry) -> None:
    token = reg.tokens[Role.INSTALLER]
    ls = await gridwatch("profile", "list", "--url", reg.url, token=token)
    assert ls.code == OK and "water-level-ultrasonic" in ls.out and "modbus" in ls.out, ls
    show = await gridwatch("profile", "show", "water-level-ultrasonic", "--url", reg.url,
                           token=token)  # fmt: skip
    profile = yaml.safe_load(show.out)
    assert show.code == OK and profile["id"] == "water-level-ultrasonic", show
    assert "level" in profile["points"] and "data_type" in profile["points"]["level"]
    for name in ("nope", "../gateways", "a/b?c=1"):  # a name stays a name, never another path
        none = await gridwatch("profile", "show", name, "--url", reg.url, token=token)
        assert none.code == FAILED and f"no profile {name!r}" in none.err, none


async def test_alert_list_filters_and_actions(reg: Registry) -> None:
    await reg.ingest(
        parked("a-fut", district="310104"), parked("a-nan", "cam-002", district="310105")
    )
    await reg.ingest(parked("a-old", "cam-003", grid="G-3"))
    await reg.ingest(parked("a-old", "cam-003", grid="G-3", state=AlertState.CLEARED))
    token = reg.tokens[Role.OPERATOR]

    async def listed(*filters: str) -> set[str]:
        ran = await gridwatch("alert", "list", *filters, "--json", "--url", reg.url, token=token)
        assert ran.code == OK, ran
        return {a["alert_id"] for a in json.loads(ran.out)}

    assert await listed() == {"a-fut", "a-nan", "a-old"}  # every stage but closed
    assert await listed("--stage", "reported") == {"a-fut", "a-nan", "a-old"}
    assert await listed("--district", "310105") == {"a-nan"}
    assert await listed("--severity", "minor") == {"a-fut", "a-nan", "a-old"}
    assert await listed("--severity", "critical") == set()
    filed = await gridwatch("alert", "file", "a-fut", "--note", "crew 7 on its way", "--url",
                            reg.url, token=token)  # fmt: skip
    assert filed.code == OK and "dispatched" in filed.out, filed  # to the catalogue's department
    assert await listed("--stage", "dispatched") == {"a-fut"}
    again = await gridwatch("alert", "file", "a-fut", "--url", reg.url, token=token)
    assert again.code == REFUSED and "409" in again.err, again
    ran = await gridwatch("alert", "dispose", "a-fut", "--url", reg.url, token=token)
    assert ran.code == OK and "disposed" in ran.out, ran
    bare = await gridwatch("alert", "verify", "a-fut", "--url", reg.url, token=token)
    assert bare.code == REFUSED and "verify needs a note saying what the inspector found" in \
        bare.err, bare  # fmt: skip
    # the camera stops seeing the car: only now may the case be verified and closed
    await reg.ingest(parked("a-fut", district="310104", state=AlertState.CLEARED))
    for action, stage in (("verify", "verified"), ("close", "closed")):
        ran = await gridwatch("alert", action, "a-fut", "--note", "lane clear", "--url", reg.url,
                              token=token)  # fmt: skip
        assert ran.code == OK and stage in ran.out, ran
    _, body = await reg.call("GET", "/api/v1/alerts/a-fut", Role.OPERATOR)
    assert [a["action"] for a in body["actions"]] == [
        "file", "dispatch", "dispose", "verify", "close",
    ]  # fmt: skip
    assert body["actions"][0]["note"] == "crew 7 on its way"
    closed = await gridwatch("alert", "close", "a-old", "--url", reg.url, token=token)
    assert closed.code == OK and "closed" in closed.out, closed  # gone by itself: never filed


async def test_an_operator_overrides_a_broken_sensor(reg: Registry) -> None:
    await reg.ingest(smoke("a-dead"))  # a smoke alarm: filed and dispatched at once
    token = reg.tokens[Role.OPERATOR]
    ran = await gridwatch("alert", "dispose", "a-dead", "--url", reg.url, token=token)
    assert ran.code == OK, ran
    refused = await gridwatch("alert", "verify", "a-dead", "--note", "no fire", "--url", reg.url,
                              token=token)  # fmt: skip
    assert refused.code == REFUSED and "verify with override and say why" in refused.err, refused
    bare = await gridwatch("alert", "verify", "a-dead", "--override", "--url", reg.url,
                           token=token)  # fmt: skip
    assert bare.code == USAGE and "--override needs --note saying why" in bare.err, bare
    short = await gridwatch("alert", "verify", "a-dead", "--override", "--note", "broken",
                            "--url", reg.url, token=token)  # fmt: skip
    assert short.code == REFUSED and "at least 15 characters saying why" in short.err, short
    why = "detector destroyed by the water"
    done = await gridwatch("alert", "verify", "a-dead", "--override", "--note", why, "--url",
                           reg.url, token=token)  # fmt: skip
    assert done.code == OK and "verified" in done.out, done
    _, body = await reg.call("GET", "/api/v1/alerts/a-dead", Role.OPERATOR)
    assert [(a["action"], a["override"], a["note"]) for a in body["actions"]
            if a["action"] == "verify"] == [("verify", True, why)]  # fmt: skip
    no_such = await gridwatch("alert", "dispose", "a-dead", "--override", "--url", reg.url,
                              token=token)  # fmt: skip
    assert no_such.code == USAGE, no_such  # dispose takes no override


SUBJECTS = [
    # (point, value, message, as `alert list` prints it): a silent or offline alert names no point
    ("obscuration", 5.2, "Smoke detected", "gw1:sd-1.obscuration"),
    ("", None, "", "gw1:sd-1 (sends no data)"),
    ("", 3.0, "", "gw1:sd-1 (no answer to 3 polls in a row)"),
    ("", None, "Detector silent", "gw1:sd-1 (Detector silent)"),
]


@pytest.mark.parametrize(("point", "value", "message", "printed"), SUBJECTS)
def test_alert_subject(point: str, value: float | None, message: str, printed: str) -> None:
    a = {"gateway": "gw1", "device": "sd-1", "point": point, "value": value, "message": message}
    assert alert_subject(a) == printed


async def test_an_installer_reads_health(reg: Registry) -> None:
    ran = await gridwatch("health", "--url", reg.url, token=reg.tokens[Role.INSTALLER])
    assert ran.code == OK and "healthy: 0 of 0 devices unhealthy" in ran.out, ran


async def _field_for_health(reg: Registry) -> None:
    """gw1 in 310104 with one device, never connected; gw-old retired."""
    bus = {"type": "modbus_tcp", "id": "cabinet", "host": "10.0.0.5", "port": 502}
    for gw in ("gw1", "gw-old"):
        status, _ = await reg.call("POST", "/api/v1/gateways", Role.INSTALLER,
                                   {"id": gw, "location": {"district": "310104", "grid": "F-7"},
                                    "buses": [bus]})  # fmt: skip
        assert status == 201
    status, _ = await reg.call("POST", "/api/v1/devices", Role.INSTALLER,
                               {"gateway": "gw1", "id": "wl-1", "bus": "cabinet", "unit_id": 1,
                                "profile": "water-level-ultrasonic",
                                "location": {"district": "310104", "grid": "F-7"}})  # fmt: skip
    assert status == 201, _
    status, _ = await reg.call("POST", "/api/v1/gateways/gw-old/retire", Role.INSTALLER)
    assert status == 200


HEALTH_NOTHING = [
    # (arguments, the words on stderr): never "healthy", never exit 0
    (["--gateway", "gw-nope"], "no gateway 'gw-nope' is registered"),
    (["--gateway", "gw-old"], "gateway 'gw-old' is retired"),
    (["--district", "31014"], "nothing matches district '31014' (districts: 310104)"),
    (["--grid", "F-9"], "nothing matches grid 'F-9' (grids: F-7)"),
    (["--profile", "nope"], "nothing matches profile 'nope' (profiles: water-level-ultrasonic)"),
    (["--gateway", "gw1", "--district", "310105"], "nothing matches district '310105'"),
]


@pytest.mark.parametrize(("args", "words"), HEALTH_NOTHING)
async def test_health_of_nothing_is_not_healthy(reg: Registry, args: list[str], words: str) -> None:
    await _field_for_health(reg)
    ran = await gridwatch("health", *args, "--url", reg.url, token=reg.tokens[Role.INSTALLER])
    assert ran.code == FAILED and words in ran.err and "healthy" not in ran.out, ran
    as_json = await gridwatch("health", *args, "--json", "--url", reg.url,
                              token=reg.tokens[Role.INSTALLER])  # fmt: skip
    assert as_json.code == FAILED and '"healthy": true' not in as_json.out, as_json


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--district", "31014"], FAILED, "no device matches district '31014'"),
        (["--gateway", "gw-nope"], FAILED, "no device matches gateway 'gw-nope'"),
        (["--district", "310104"], OK, ""),
    ],
)  # fmt: skip
async def test_a_device_list_that_matches_nothing_is_bad_news(
    reg: Registry, args: list[str], code: int, words: str
) -> None:
    await _field_for_health(reg)
    ran = await gridwatch("device", "list", *args, "--url", reg.url,
                          token=reg.tokens[Role.INSTALLER])  # fmt: skip
    assert ran.code == code and words in ran.err, ran


async def test_health_api_refuses_a_gateway_it_does_not_have(reg: Registry) -> None:
    await _field_for_health(reg)
    status, body = await reg.call("GET", "/api/v1/health?gateway=gw-nope", Role.INSTALLER)
    assert status == 404 and body["detail"] == "no gateway 'gw-nope'", body
    status, body = await reg.call("GET", "/api/v1/health?gateway=gw-old", Role.INSTALLER)
    assert status == 409 and "retired" in body["detail"], body
    status, body = await reg.call("GET", "/api/v1/health?district=31014", Role.INSTALLER)
    assert status == 200 and body["healthy"] is None, body
    assert body["nothing_matches"] == {"filters": {"district": "31014"},
                                       "known": {"district": ["310104"]}}  # fmt: skip
    # a gateway that exists is judged, even while it has nothing to say
    status, body = await reg.call("GET", "/api/v1/health?gateway=gw1", Role.INSTALLER)
    assert status == 200 and body["healthy"] is False and body["nothing_matches"] is None, body


async def test_a_gateway_that_never_connected_is_listed_as_never_connected(reg: Registry) -> None:
    await _field_for_health(reg)
    token = reg.tokens[Role.INSTALLER]
    for argv in (["gateway", "list"], ["gateway", "show", "gw1"]):
        ran = await gridwatch(*argv, "--url", reg.url, token=token)
        assert ran.code == OK and "never connected" in ran.out and "offline" not in ran.out, ran
    added = await gridwatch("gateway", "add", "gw2", "--url", reg.url, token=token)
    assert added.code == OK and "never connected" in added.out, added
    listed = await gridwatch("gateway", "list", "--all", "--url", reg.url, token=token)
    assert "retired" in listed.out, listed
    status, body = await reg.call("GET", "/api/v1/gateways/gw1", Role.INSTALLER)
    assert status == 200 and body["status"] == "never_connected", body


async def test_a_reader_that_closes_early_ends_the_command_quietly(reg: Registry) -> None:
    """``gridwatch health | head -3``: the reader is gone before we write; no traceback, no
    ``[Errno 32] Broken pipe``, and 141 (128 + SIGPIPE) as a Unix tool would."""
    await reg.ingest(smoke("a-1"), smoke("a-2", "sd-002"))
    env = {k: v for k, v in os.environ.items() if k not in ("GRIDWATCH_TOKEN", "GRIDWATCH_URL")}
    env |= {"PYTHONPATH": str(ROOT), "GRIDWATCH_TOKEN": reg.tokens[Role.OPERATOR]}
    for argv in (["health"], ["profile", "list"], ["alert", "list"]):  # healthcli, run_api
        read, write = os.pipe()
        os.close(read)  # the reader closed early: every write now meets a broken pipe
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gridwatch.top.cli", *argv, "--url", reg.url, env=env,
            cwd=ROOT, stdout=write, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        os.close(write)
        async with asyncio.timeout(60):
            _, err = await proc.communicate()
        assert (proc.returncode, err.decode()) == (141, ""), argv


@pytest.mark.parametrize(
    ("status", "body", "said"),
    [
        # the registry's 503 says what to do already: once, not "try again later; try again later"
        (503, {"title": "Service Unavailable", "detail": "the registry's database cannot be "
               "reached now; try again later"},
         "the registry cannot do this now (503 Service Unavailable): the registry's database "
         "cannot be reached now; try again later"),
        (503, {"title": "Service Unavailable", "detail": "maintenance"},
         "the registry cannot do this now (503 Service Unavailable): maintenance; try again later"),
        (503, None, "the registry cannot do this now (503); try again later"),
        # a server that is not the registry: its text, after the words its exit code says
        (400, "Bad Request\n<hr>nginx", "refused (400): Bad Request <hr>nginx"),
        (404, "Not Found", "not found (404): Not Found"),
    ],
)  # fmt: skip
def test_an_http_error_is_said_as_its_exit_code_says(status: int, body: Any, said: str) -> None:
    assert str(Refused(status, body)) == said
