"""docs/deploy.md, checked, so the deployment guide cannot drift from the code.

- Every ``gridwatch ...`` command in a shell or unit-file block parses with the real CLI parser
  (``gridwatch/top/cli.py`` ``build_parser``): subcommand, flags, values. A command named in the
  text (an inline code span) names a subcommand that exists and flags it takes; the commands the
  guide says do not exist yet (``NOT_YET``) must not parse, so the guide is updated when they land.
- Every ``mosquitto.conf`` block starts the real mosquitto, with its paths and ports moved to a
  temporary folder and free loopback ports: the dynsec admin logs in, an anonymous client is
  refused, the TLS listener answers with the CA.
- The guide's bridge account on that broker: the role the registry gives its centre account
  refuses a shared subscription until the guide's ``addRoleACL`` line is run, and grants it after;
  and the guide's ``bridge run`` command, pointed at that broker, PostgreSQL and VictoriaMetrics,
  receives what a gateway publishes (without the line it says it subscribed and receives nothing).
- Every link of the guide to another document reaches a section that exists.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import os
import re
import shlex
import shutil
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from device_registry.inventory.provisioning import CENTRAL_ROLE, central_commands
from gridwatch.top.cli import build_parser
from tests.services import Victoria, free_port, wait_port
from tests.tls import make_certs

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "deploy.md"
FENCE = re.compile(r"^[ \t]*```([a-z]*)[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
INLINE = re.compile(r"`((?:/opt/gridwatch/bin/)?gridwatch [^`]+)`")
SHELL_OPS = {"|", "||", ">", ">>", "<", "&&", ";", "&", "2>&1"}
NOT_YET: set[str] = set()
"""Commands the guide marks **not yet**: when one parses, write it into the guide properly."""
ADMIN, ADMIN_PW = "registry-admin", "admin-pw-for-the-guide"
DYNSEC = "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so"


def blocks(lang: str) -> list[str]:
    return [body for info, body in FENCE.findall(DOC.read_text(encoding="utf-8")) if info == lang]


def commands_in(script: str) -> list[list[str]]:
    """Each ``gridwatch`` command of a shell script (continuations joined), as argv after
    ``gridwatch``, up to the first shell operator."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        lex = shlex.shlex(line, posix=True, punctuation_chars=True)
        lex.whitespace_split = True
        tokens = list(lex)
        starts = [
            i for i, t in enumerate(tokens)
            if (t == "gridwatch" or t.endswith("/bin/gridwatch"))
            and (i == 0 or tokens[i - 1] in SHELL_OPS)  # in command position, not an argument
        ]  # fmt: skip
        for i in starts:
            argv = []
            for t in tokens[i + 1 :]:
                if t in SHELL_OPS:
                    break
                argv.append(t)
            found.append(argv)
    return found


def fenced_commands() -> list[list[str]]:
    return [argv for lang in ("sh", "ini") for body in blocks(lang) for argv in commands_in(body)]


def parse_error(argv: list[str]) -> str | None:
    """What argparse says about ``gridwatch ARGV`` (None: it parses). The variables its
    ``--*-env`` flags name are set, as on the host the guide describes (a parser may check them)."""
    named = {v: "set-on-the-host" for f, v in itertools.pairwise(argv) if f.endswith("-env")}
    err = io.StringIO()
    with (
        mock.patch.dict(os.environ, named),
        contextlib.redirect_stderr(err),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        try:
            build_parser().parse_args(argv)
        except SystemExit as exc:
            return err.getvalue().strip().splitlines()[-1] if exc.code else None
    return None


def unknown_words(argv: list[str]) -> list[str]:
    """The subcommand words and ``--flags`` of a partial command that the parser does not have."""
    parser: argparse.ArgumentParser = build_parser()
    rest = list(argv)
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs:
            break
        if not rest or rest[0] not in subs[0].choices:
            return [rest[0] if rest else "(missing subcommand)"]
        parser = subs[0].choices[rest.pop(0)]
    return [
        t
        for t in rest
        if t.startswith("-") and t.split("=")[0] not in parser._option_string_actions
    ]


def test_the_guide_has_its_commands() -> None:
    """The extraction finds the guide's commands (an empty list would check nothing)."""
    heads = {" ".join(argv[:2]) for argv in fenced_commands()}
    assert {"bridge run", "registry serve", "gateway add", "edge run", "config check",
            "probe modbus", "device add", "device commission"} <= heads  # fmt: skip


@pytest.mark.parametrize("argv", fenced_commands(), ids=lambda a: " ".join(a[:2]))
def test_every_command_in_a_block_parses(argv: list[str]) -> None:
    assert parse_error(argv) is None, f"gridwatch {' '.join(argv)}"


def inline_commands() -> list[str]:
    return sorted(set(INLINE.findall(DOC.read_text(encoding="utf-8"))))


@pytest.mark.parametrize("text", inline_commands())
def test_every_command_in_the_text_exists(text: str) -> None:
    argv = shlex.split(text)[1:]
    if text in NOT_YET:
        assert parse_error(argv) is not None, f"`{text}` exists now: describe it in the guide"
    else:
        assert unknown_words(argv) == [], text


@pytest.mark.parametrize(
    ("argv", "unknown"),
    [(["bridge", "run", "--share-group", "g"], []), (["bridge", "run", "--sharegroup", "g"],
     ["--sharegroup"]), (["edge", "stats"], ["stats"]), (["gateway", "add"], []),
     (["registry", "serve", "--tls-cert=a.pem"], []), (["central"], ["(missing subcommand)"])],
)  # fmt: skip
def test_unknown_words(argv: list[str], unknown: list[str]) -> None:
    assert unknown_words(argv) == unknown


def test_commands_in_a_script() -> None:
    script = (
        "export X=1\ngridwatch bridge run --a 1 \\\n    --b 2 | tee log\n"
        "/opt/gridwatch/bin/gridwatch config check f.yaml && echo ok\n"
        "ExecStart=/opt/gridwatch/bin/gridwatch edge run -c g.yaml\n"
    )
    assert commands_in(script) == [["bridge", "run", "--a", "1", "--b", "2"],
                                   ["config", "check", "f.yaml"], ["edge", "run", "-c", "g.yaml"]]  # fmt: skip


# --- mosquitto ------------------------------------------------------------------------------


@dataclass
class Broker:
    proc: subprocess.Popen[bytes]
    plain: int
    tls: int
    ca: Path
    log: Path


def mosquitto_confs() -> list[str]:
    confs = [b for b in blocks("conf") if b.startswith("# mosquitto.conf")]
    assert confs, "docs/deploy.md has no mosquitto.conf block"
    return confs


def localise(conf: str, work: Path) -> tuple[str, list[tuple[int, bool]]]:
    """The guide's config with its files in ``work`` and its listeners on free loopback ports;
    the ports with whether each is a TLS listener."""
    certs = make_certs(work / "certs")
    (work / "certs").chmod(0o755)
    moved = {"cafile": certs.ca, "certfile": certs.cert, "keyfile": certs.key,
             "plugin_opt_config_file": work / "state" / "dynsec.json",
             "persistence_location": f"{work / 'state'}/"}  # fmt: skip
    lines, listeners = [], []
    for line in conf.splitlines():
        key = line.partition(" ")[0]
        if key == "listener":
            listeners.append([free_port(), False])
            line = f"listener {listeners[-1][0]} 127.0.0.1"
        elif key == "cafile":
            listeners[-1][1] = True
        elif key == "log_dest":
            line = f"log_dest file {work / 'state' / 'mosquitto.log'}"
        if key in moved:
            line = f"{key} {moved[key]}"
        lines.append(line)
    return "\n".join(lines) + "\n", [(int(p), bool(t)) for p, t in listeners]


@contextlib.contextmanager
def guide_broker(conf: str) -> Iterator[Broker]:
    if not Path(DYNSEC).exists() or not shutil.which("mosquitto"):
        pytest.skip("mosquitto with its dynamic-security plugin is not installed")
    work = Path(tempfile.mkdtemp(prefix="gridwatch-deploy-"))
    work.chmod(0o755)
    state = work / "state"
    state.mkdir()
    subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(state / "dynsec.json"), ADMIN,
                    ADMIN_PW], check=True, capture_output=True)  # fmt: skip
    # mosquitto drops to its own user before it reads the plugin's file and writes persistence
    shutil.chown(state, "mosquitto")
    shutil.chown(state / "dynsec.json", "mosquitto")
    text, listeners = localise(conf, work)
    (work / "mosquitto.conf").write_text(text)
    proc = subprocess.Popen(["mosquitto", "-c", str(work / "mosquitto.conf")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        for port, _ in listeners:
            deadline = time.monotonic() + 10
            while True:
                if proc.poll() is not None:
                    out = proc.stdout.read().decode() if proc.stdout else ""
                    pytest.fail(f"mosquitto refused the guide's config:\n{out}\n{text}")
                try:
                    wait_port("127.0.0.1", port, timeout=0.2)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline, f"mosquitto does not listen on {port}"
        plain = next(p for p, tls in listeners if not tls)
        secure = next(p for p, tls in listeners if tls)
        yield Broker(proc, plain, secure, work / "certs" / "ca.pem", state / "mosquitto.log")
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def session(port: int, user: str | None, password: str | None,
            ca: Path | None = None) -> Iterator[tuple[mqtt.Client, ReasonCode]]:  # fmt: skip
    """An MQTT 5 client, connected (or refused: the CONNACK's reason code)."""
    done = threading.Event()
    answer: list[ReasonCode] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    if user is not None:
        c.username_pw_set(user, password)
    if ca is not None:
        c.tls_set(ca_certs=str(ca), cert_reqs=ssl.CERT_REQUIRED)

    def on_connect(_c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        answer.append(rc)
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        assert done.wait(10), "no CONNACK"
        yield c, answer[0]
    finally:
        c.disconnect()
        c.loop_stop()


def suback(c: mqtt.Client, topic: str) -> int:
    got = threading.Event()
    codes: list[int] = []

    def on_subscribe(
        _c: mqtt.Client, _u: object, _m: int, rcs: list[ReasonCode], _p: object
    ) -> None:
        codes.extend(rc.value for rc in rcs)
        got.set()

    c.on_subscribe = on_subscribe
    c.subscribe(topic, qos=1)
    assert got.wait(10), "no SUBACK"
    return codes[0]


def dynsec(c: mqtt.Client, commands: list[dict[str, object]]) -> list[dict[str, object]]:
    """Send dynamic-security commands as the registry does; the plugin's answers."""
    got = threading.Event()
    answers: list[dict[str, object]] = []

    def on_message(_c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        answers.extend(json.loads(msg.payload)["responses"])
        got.set()

    c.on_message = on_message
    assert suback(c, "$CONTROL/dynamic-security/v1/response") < 0x80
    c.publish("$CONTROL/dynamic-security/v1", json.dumps({"commands": commands}), qos=1)
    assert got.wait(10), "no answer from the dynamic-security plugin"
    return answers


def ctrl_lines() -> list[list[str]]:
    """The guide's ``$C ...`` lines (``C="mosquitto_ctrl ... dynsec"``), as dynsec arguments."""
    script = next(b for b in blocks("sh") if "addRoleACL" in b)
    return [shlex.split(line, comments=True)[1:] for line in script.splitlines()
            if line.startswith("$C ")]  # fmt: skip


@pytest.mark.parametrize("conf", mosquitto_confs(), ids=lambda c: c.splitlines()[0])
def test_the_guides_mosquitto_conf_runs(conf: str) -> None:
    with guide_broker(conf) as b:
        with session(b.plain, ADMIN, ADMIN_PW) as (_, rc):
            assert rc.value == 0, f"the dynsec admin is refused: {rc}"
        with session(b.plain, None, None) as (_, rc):
            assert rc.value == 135, f"an anonymous client is let in: {rc}"
        with session(b.tls, ADMIN, ADMIN_PW, ca=b.ca) as (_, rc):
            assert rc.value == 0, f"the TLS listener refuses the admin: {rc}"


def test_the_guides_bridge_account_may_share_the_subscription() -> None:
    lines = ctrl_lines()
    assert [line[0] for line in lines] == ["createClient", "addClientRole", "addRoleACL"]
    shared = "$share/ingest/gridwatch/gw/+/telemetry"
    with guide_broker(mosquitto_confs()[0]) as b:
        with session(b.plain, ADMIN, ADMIN_PW) as (admin, _):
            # the role as the registry makes it at its first start (it then adds the role to its
            # own account, which makes the broker cut that account's sessions: not needed here)
            role = [c for c in central_commands("gridwatch", ADMIN) if c["command"] == "createRole"]
            assert [a.get("error") for a in dynsec(admin, role)] == [None]

        def ctrl(args: list[str]) -> None:
            if args[0] == "createClient":
                args = [*args, "-p", "bridge-pw"]  # the guide lets it ask
            subprocess.run(["mosquitto_ctrl", "-h", "127.0.0.1", "-p", str(b.plain), "-u", ADMIN,
                            "-P", ADMIN_PW, "dynsec", *args], check=True, capture_output=True)  # fmt: skip

        for args in lines[:2]:
            ctrl(args)
        assert lines[1][-1] == CENTRAL_ROLE
        with session(b.plain, lines[0][1], "bridge-pw") as (bridge, rc):
            assert rc.value == 0
            assert suback(bridge, "gridwatch/gw/+/telemetry") < 0x80
            assert suback(bridge, shared) >= 0x80, "dynsec grants $share now: update the guide"
        ctrl(lines[2])
        with session(b.plain, lines[0][1], "bridge-pw") as (bridge, _):
            assert suback(bridge, shared) < 0x80


# --- links ----------------------------------------------------------------------------------

LINK = re.compile(r"\]\(([a-z]+\.md)(?:#([^)]+))?\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation but ``-`` and ``_`` dropped."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@pytest.mark.parametrize(
    ("heading", "anchor"),
    [("Throughput and alert latency (`bench/bridge_bench.py`)",
      "throughput-and-alert-latency-benchbridge_benchpy"),
     ("Broker access (mosquitto dynamic security)", "broker-access-mosquitto-dynamic-security"),
     ("The uplink: one broker or several", "the-uplink-one-broker-or-several")],
)  # fmt: skip
def test_slug(heading: str, anchor: str) -> None:
    assert slug(heading) == anchor


def test_every_link_of_the_guide_reaches_its_section() -> None:
    broken = []
    for name, anchor in LINK.findall(DOC.read_text(encoding="utf-8")):
        target = DOC.parent / name
        if not target.exists():
            broken.append(name)
            continue
        headings = re.findall(r"^#+ (.+)$", target.read_text(encoding="utf-8"), re.M)
        if anchor and anchor not in {slug(h) for h in headings}:
            broken.append(f"{name}#{anchor}")
    assert broken == []


def guide_bridge_argv(broker_port: int, db_url: str, influx_url: str, metrics: int) -> list[str]:
    """The guide's ``bridge run`` command with its addresses moved to this machine's services."""
    argv = next(a for a in fenced_commands() if a[:2] == ["bridge", "run"])
    here = {"--mqtt-host": "127.0.0.1", "--mqtt-port": str(broker_port), "--db-url": db_url,
            "--influx-url": influx_url, "--http-host": "127.0.0.1", "--metrics-port": str(metrics)}  # fmt: skip
    return [here.get(prev, arg) for prev, arg in zip(["", *argv[:-1]], argv, strict=True)]


def metric(url: str, name: str) -> float:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return -1.0
    found = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_the_guides_bridge_receives_on_its_shared_subscription(
    pg_url: str, victoria: Victoria, tmp_path: Path
) -> None:
    """The whole recipe: the guide's mosquitto.conf, the registry's role, the guide's account
    lines, the guide's bridge command: a message a gateway publishes reaches the bridge."""
    with guide_broker(mosquitto_confs()[0]) as b:
        with session(b.plain, ADMIN, ADMIN_PW) as (admin, _):
            role = [c for c in central_commands("gridwatch", ADMIN) if c["command"] == "createRole"]
            assert [a.get("error") for a in dynsec(admin, role)] == [None]
        for args in ctrl_lines():
            args = [*args, "-p", "bridge-pw"] if args[0] == "createClient" else args
            subprocess.run(["mosquitto_ctrl", "-h", "127.0.0.1", "-p", str(b.plain), "-u", ADMIN,
                            "-P", ADMIN_PW, "dynsec", *args], check=True, capture_output=True)  # fmt: skip
        port = free_port()
        argv = guide_bridge_argv(b.plain, pg_url, victoria.url, port)
        env = {**os.environ, "MQ_BRIDGE_PW": "bridge-pw"}
        log = tmp_path / "bridge.log"
        with log.open("wb") as out:
            bridge = subprocess.Popen([sys.executable, "-m", "gridwatch.top.cli", *argv],
                                      env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)  # fmt: skip
        url = f"http://127.0.0.1:{port}/metrics"
        try:
            deadline = time.monotonic() + 60
            while metric(url, "gridwatch_bridge_connected") < 1:
                assert bridge.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            with session(b.plain, "centre-bridge", "bridge-pw") as (gw, _):
                gw.publish("gridwatch/gw/gw-xh-12/telemetry", b"not json", qos=1).wait_for_publish(
                    5
                )
            while metric(url, "gridwatch_bridge_received_total") < 1:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
        finally:
            bridge.terminate()
            bridge.wait(30)


async def test_a_bridge_the_broker_refuses_its_share_says_so_and_is_not_up() -> None:
    """Without the guide's addRoleACL line, dynamic security refuses the shared filter in the
    SUBACK and keeps the connection: the bridge used to log 'subscribed' and hear nothing. Its
    session now fails, names the filter, and tries again (gridwatch.ground.mqttsession)."""
    from gridwatch.ground.endpoints import Endpoint
    from gridwatch.ground.mqttsession import MqttSession, SessionSettings

    lines = ctrl_lines()
    shared = "$share/ingest/gridwatch/gw/+/telemetry"
    with guide_broker(mosquitto_confs()[0]) as b:
        with session(b.plain, ADMIN, ADMIN_PW) as (admin, _):
            role = [c for c in central_commands("gridwatch", ADMIN) if c["command"] == "createRole"]
            assert [a.get("error") for a in dynsec(admin, role)] == [None]
        for args in lines[:2]:  # the account and its role, not the $share line
            args = [*args, "-p", "bridge-pw"] if args[0] == "createClient" else args
            await asyncio.to_thread(
                subprocess.run, ["mosquitto_ctrl", "-h", "127.0.0.1", "-p", str(b.plain), "-u",
                                 ADMIN, "-P", ADMIN_PW, "dynsec", *args],
                check=True, capture_output=True,
            )  # fmt: skip
        settings = SessionSettings(
            endpoints=(Endpoint("127.0.0.1", b.plain),), client_id=f"bridge-{free_port()}",
            username=lines[0][1], password="bridge-pw", protocol="5",
            subscriptions=((shared, 1),),
        )  # fmt: skip
        s = MqttSession(settings, "telemetry")

        async def serve(_client: object) -> None:
            await asyncio.Event().wait()

        task = asyncio.create_task(s.run(serve))  # type: ignore[arg-type]
        try:
            await s.watch.until(lambda: "refused the subscription" in (s.state.last_error or ""),
                                20)  # fmt: skip
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert not s.state.connected and shared in (s.state.last_error or "")


@pytest.mark.parametrize(
    ("unit", "line"),
    [("gridwatch-edge.service", "EnvironmentFile=-%E/gridwatch/edge.env"),
     ("gridwatch-edge.service", "WorkingDirectory=%S/gridwatch-edge"),
     ("gridwatch-bridge.service", "EnvironmentFile=-%E/gridwatch/bridge.env"),
     ("gridwatch-registry.service", "EnvironmentFile=-%E/gridwatch/registry.env"),
     ("gridwatch-registry.service", "LimitNOFILE=16384")],
)  # fmt: skip
def test_the_shipped_units_are_as_the_guide_says(unit: str, line: str) -> None:
    """The guide sends installers to the shipped units with no drop-in: what it says they read
    (the password files, the working directory the relative outbox path lands in) they read."""
    assert f"`firmware_configs/systemd/{unit}`" in DOC.read_text(encoding="utf-8")
    text = (ROOT / "firmware_configs" / "systemd" / unit).read_text(encoding="utf-8")
    assert line in text.splitlines(), f"{unit} lacks {line}"
