"""The centre's config file: ``central.yaml`` errors as file:line: key, flags over the file,
secrets from the environment or files, each subcommand's own options, the shipped example, and
real ``gridwatch central run -c`` processes whose API answers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from firmware_configs import CENTRAL, SCHEMA
from gridwatch.ground import centralconf
from gridwatch.ground.centralconf import CentralConfig, Loaded, load_central, settle
from gridwatch.ground.shipped import firmware
from gridwatch.ground.yamlconf import ConfigError
from gridwatch.top import exits
from gridwatch.top.cli import build_parser
from gridwatch.top.cli import main as cli
from gridwatch.top.configcheck import check
from tests.services import Mosquitto, free_port

EXAMPLE = firmware(CENTRAL) / "central.example.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "central.yaml"
    path.write_text(text)
    return path


BAD: list[tuple[str, str, str]] = [
    # (file text, environment variable set to "x" or "", the one problem: line: keys: message)
    ("http:\n  port: eighty\n", "", "2: http -> port: Input should be a valid integer, unable "
     "to parse string as an integer (got 'eighty')"),
    ("http:\n  host: 0.0.0.0\n  prot: 8080\n", "", "3: http -> prot: Extra inputs are not "
     "permitted (got 8080)"),
    ("mqt:\n  port: 1883\n", "", "1: mqt: Extra inputs are not permitted"),
    ("mqtt:\n  username: c\n  password_env: GW_TEST_UNSET_PW\n", "",
     "3: mqtt -> password_env: environment variable GW_TEST_UNSET_PW is not set"),
    ("mqtt:\n  password_env: GW_TEST_PW\n  password_file: /x\n", "GW_TEST_PW",
     "1: mqtt: Value error, give password_env or password_file, not both"),
    ("mqtt:\n  password_file: /nonexistent/pw\n", "",
     "2: mqtt -> password_file: cannot read /nonexistent/pw: No such file or directory"),
    ("mqtt:\n  endpoints:\n    - {host: a, port: 1}\n    - {host: a, port: 1}\n", "",
     "2: mqtt -> endpoints: Value error, each broker once: a:1 is listed twice"),
    ("mqtt:\n  endpoints:\n    - {host: a, port: 70000}\n", "", "3: mqtt -> endpoints -> 0 -> "
     "port: Input should be less than or equal to 65535 (got 70000)"),
    ("mqtt:\n  client_id: gridwatch-edge-x\n", "", "2: mqtt -> client_id: Value error, not a "
     "bridge id: it must not be empty or start with 'gridwatch-edge-', the client ids of "
     "gateways (docs/security.md) (got 'gridwatch-edge-x')"),
    ("timeseries:\n  token_env: GW_TEST_UNSET_TOKEN\n", "",
     "2: timeseries -> token_env: environment variable GW_TEST_UNSET_TOKEN is not set"),
    ("registry:\n  password_env: GW_TEST_UNSET_ADMIN\n", "",
     "2: registry -> password_env: environment variable GW_TEST_UNSET_ADMIN is not set"),
    ("database:\n  url: sqlite+aiosqlite:///x.db\n  url_env: GW_TEST_PW\n", "GW_TEST_PW",
     "1: database: Value error, give url, url_env or url_file: one of them"),
    ("http: [8080]\n", "", "1: http: Input should be a valid dictionary or instance of "
     "HttpSection"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "env", "problem"), BAD)
def test_a_bad_central_yaml_names_its_file_line_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, env: str, problem: str
) -> None:
    if env:
        monkeypatch.setenv(env, "x")
    path = _write(tmp_path, text)
    accepted = set(centralopts_dests("central run"))
    with pytest.raises(ConfigError) as err:
        settle(load_central(path), {}, accepted)
    assert [str(p) for p in err.value.problems] == [f"{path}:{problem}"]
    # config check reads the file, not the secrets: they are on the centre, not the laptop
    secret = "is not set" in problem or "cannot read" in problem
    assert check(path) == ([] if secret else [f"{path}:{problem}"])


def centralopts_dests(role: str) -> list[str]:
    """The argparse dests of one subcommand (what it accepts), from a real parser."""
    parser = build_parser()
    words = role.split()
    sub = _subparser(parser, words)
    return [a.dest for a in sub._actions if a.dest not in ("help", "config")]


def _subparser(parser: Any, words: list[str]) -> Any:
    for word in words:
        action = next(a for a in parser._actions if a.dest in ("cmd", "sub"))
        parser = action.choices[word]
    return parser


def test_a_broken_central_yaml_stops_the_command_with_its_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "http:\n  port: 8080\nmqtt:\n  protocol: 4\n")
    proc = subprocess.run(
        [sys.executable, "-m", "gridwatch.top.cli", "central", "run", "-c", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert f"{path}:4: mqtt -> protocol: Input should be 'auto', '5' or '3.1.1' (got 4)" in (
        proc.stderr
    )
    assert cli(["config", "check", str(path)]) == 1


def test_a_secret_key_that_is_no_fernet_key_stops_central_before_it_makes_anything(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    env = {**os.environ, "GRIDWATCH_SECRET_KEY": "not-a-fernet-key", "GRIDWATCH_LANG": "en"}
    env.pop("GRIDWATCH_ADMIN_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, "-m", "gridwatch.top.cli", "central", "run", "--data-dir", str(data),
         "--mqtt-host", "127.0.0.1", "--mqtt-port", "1", "--http-port", "0"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert proc.returncode == exits.BAD_NEWS, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "GRIDWATCH_SECRET_KEY must be Fernet keys" in lines[0]
    assert "shown once" not in proc.stdout + proc.stderr
    assert not (data / "registry.db").exists()  # nothing made: no database, no admin token


FILE = """\
data_dir: {data}
http: {{host: 127.0.0.2, port: 9001}}
mqtt:
  endpoints: [{{host: mq-a, port: 1884}}, {{host: mq-b}}, {{host: "fd00::2"}}]
  port: 1999
  username: centre
  password_file: {pwfile}
  prefix: city
  client_id: hq
registry: {{username: admin, password_env: GW_TEST_ADMIN_PW, dynsec: true}}
gateway_mqtt: {{endpoints: [{{host: mq.city.example}}], port: 8883, ca_file: /ca.pem}}
timeseries: {{influx_url: "http://vm:8428", token_env: GW_TEST_TOKEN, history_hours: 12}}
bridge: {{share_group: centre, metrics_port: 9100}}
"""

PRECEDENCE: list[tuple[str, list[str], dict[str, Any]]] = [
    # (subcommand, flags, what the merged options must hold)
    ("central run", [], {
        "http_host": "127.0.0.2", "http_port": 9001, "mqtt_host": "mq-a:1884,mq-b,[fd00::2]",
        "mqtt_port": 1999, "mqtt_username": "centre", "mqtt_password": "from-file",
        "prefix": "city", "bridge_id": "hq", "broker_admin_user": "admin",
        "broker_admin_password": "admin-pw", "dynsec": True,
        "gateway_mqtt_host": "mq.city.example", "gateway_mqtt_port": 8883,
        "gateway_mqtt_ca": "/ca.pem", "influx_url": "http://vm:8428", "influx_token": "tok",
        "history_hours": 12.0, "share_group": "centre", "db_url": None}),
    ("central run", ["--http-port", "0", "--mqtt-host", "other", "--prefix", "p2",
                     "--mqtt-password-env", "GW_TEST_FLAG_PW", "--history-hours", "1",
                     "--bridge-id", "hq2"], {
        "http_port": 0, "mqtt_host": "other", "prefix": "p2", "mqtt_password": "flag-pw",
        "history_hours": 1.0, "bridge_id": "hq2", "http_host": "127.0.0.2"}),
    # a flag given with the default's value still beats the file
    ("central run", ["--http-port", "8080", "--data-dir", "var/central"],
     {"http_port": 8080, "data_dir": "var/central"}),
    ("central run", ["--db-url", "sqlite+aiosqlite:///flag.db"],
     {"db_url": "sqlite+aiosqlite:///flag.db"}),
    ("registry serve", ["--dynsec"], {"dynsec": True, "http_port": 9001,
                                      "broker_admin_password": "admin-pw"}),
    ("bridge run", ["--metrics-port", "9200"], {"metrics_port": 9200, "http_host": "127.0.0.2",
                                                 "share_group": "centre"}),
]  # fmt: skip


@pytest.mark.parametrize(("role", "flags", "expected"), PRECEDENCE)
def test_flags_override_the_file_and_the_file_the_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, role: str, flags: list[str],
    expected: dict[str, Any],
) -> None:  # fmt: skip
    for name, value in (("GW_TEST_ADMIN_PW", "admin-pw"), ("GW_TEST_TOKEN", "tok"),
                        ("GW_TEST_FLAG_PW", "flag-pw")):  # fmt: skip
        monkeypatch.setenv(name, value)
    pwfile = tmp_path / "mqtt.pw"
    pwfile.write_text("from-file\n")
    path = _write(tmp_path, FILE.format(data=tmp_path, pwfile=pwfile))
    args = vars(build_parser().parse_args([*role.split(), "-c", str(path), *flags]))
    assert {k: args[k] for k in expected} == expected
    assert args["config"] == str(path)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (None, "central.yaml: (top level): cannot read: No such file or directory"),
        ("- http\n", "central.yaml:1: (top level): Input should be a valid dictionary or instance "
         "of CentralConfig"),
        ("http: {port: 1\n", "central.yaml:2: (top level): not valid YAML: expected ',' or '}', "
         "but got '<stream end>'"),
    ],
)  # fmt: skip
def test_a_file_that_is_not_a_central_yaml_stops_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, says: str
) -> None:
    path = tmp_path / "central.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["registry", "serve", "-c", str(path)])
    assert done.value.code == 1
    assert f"{tmp_path}/{says}" in capsys.readouterr().err


@pytest.mark.parametrize("text", ["", "# all commented out\n", "http:\nmqtt:\n"])
def test_an_empty_file_or_section_means_the_defaults(tmp_path: Path, text: str) -> None:
    assert load_central(_write(tmp_path, text)).config == CentralConfig()


def test_without_a_file_the_defaults_are_todays() -> None:
    args = vars(build_parser().parse_args(["central", "run"]))
    assert {k: args[k] for k in ("data_dir", "http_host", "http_port", "mqtt_host", "mqtt_port",
                                 "mqtt_protocol", "prefix", "bridge_id", "history_hours",
                                 "mqtt_password", "dynsec", "db_url")} == {
        "data_dir": "var/central", "http_host": "127.0.0.1", "http_port": 8080,
        "mqtt_host": None, "mqtt_port": 1883, "mqtt_protocol": "auto", "prefix": "gridwatch",
        "bridge_id": "gridwatch-bridge", "history_hours": 48.0, "mqtt_password": None,
        "dynsec": False, "db_url": None,
    }  # fmt: skip


def test_a_password_flag_naming_an_unset_variable_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["bridge", "run", "--mqtt-password-env", "GW_TEST_UNSET_X"])
    assert done.value.code == 1
    assert "command line: --mqtt-password-env: environment variable GW_TEST_UNSET_X is not set" in (
        capsys.readouterr().err
    )


# each subcommand's options, written out (docs/central.md has the same table)
COMMON = ["data_dir", "db_url", "mqtt_host", "mqtt_port", "mqtt_username", "mqtt_password_env",
          "mqtt_protocol", "prefix", "bridge_id"]  # fmt: skip
HTTP = ["http_host", "http_port", "tls_cert", "tls_key"]
INSTALLER = ["broker_admin_user", "broker_admin_password_env", "dynsec", "gateway_mqtt_host",
             "gateway_mqtt_port", "gateway_mqtt_ca"]  # fmt: skip
SINK = ["influx_url", "influx_bucket", "influx_org", "influx_token_env", "history_hours",
        "share_group"]  # fmt: skip
DRILL = ["escalation_scale"]  # the processes that open alerts


@pytest.mark.parametrize(
    ("role", "options"),
    [
        ("central run", COMMON + HTTP + INSTALLER + SINK + DRILL),
        ("registry serve", COMMON + HTTP + INSTALLER),
        ("bridge run", [*COMMON, *SINK, *DRILL, "http_host", "metrics_port"]),
    ],
)
def test_each_subcommand_takes_the_options_it_uses(role: str, options: list[str]) -> None:
    assert sorted(centralopts_dests(role)) == sorted(options)


@pytest.mark.parametrize(
    "argv",
    [
        ["registry", "serve", "--influx-url", "http://vm"],
        ["registry", "serve", "--share-group", "g"],
        ["registry", "serve", "--metrics-port", "9100"],
        ["bridge", "run", "--tls-cert", "c.pem"],
        ["bridge", "run", "--dynsec"],
        ["bridge", "run", "--http-port", "8080"],
        ["central", "run", "--metrics-port", "9100"],
    ],
)
def test_an_option_a_subcommand_does_not_use_is_refused(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(argv)
    assert done.value.code == 2


def test_the_shipped_example_validates_and_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    assert check(EXAMPLE) == []
    loaded = load_central(EXAMPLE)
    assert loaded.config == CentralConfig()  # the example shows the defaults it documents
    assert cli(["config", "example", "central"]) == 0
    assert capsys.readouterr().out == EXAMPLE.read_text()


@pytest.mark.parametrize("name", ["central.schema.json", "gateway.schema.json"])
def test_the_shipped_schema_is_up_to_date(tmp_path: Path, name: str) -> None:
    assert cli(["config", "check", str(EXAMPLE), "--schema-dir", str(tmp_path)]) == 0
    fresh = json.loads((tmp_path / name).read_text())
    assert json.loads((firmware(SCHEMA) / name).read_text()) == fresh, (
        f"regenerate: gridwatch config check --schema-dir firmware_configs/schema ({name})"
    )


def test_the_example_in_docs_central_md_validates(tmp_path: Path) -> None:
    doc = (Path(__file__).parent.parent / "docs" / "central.md").read_text()
    section = doc.split("### The config file: `central.yaml`", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    loaded = load_central(_write(tmp_path, block))
    assert loaded.config.registry.dynsec is True
    assert [b.host for b in loaded.config.mqtt.endpoints or []] == ["mq-a", "mq-b"]


def test_every_key_of_the_schema_is_described() -> None:
    schema = CentralConfig.model_json_schema()
    for name, sect in [("CentralConfig", schema), *schema["$defs"].items()]:
        if name == "Broker" or "properties" not in sect:
            continue
        for key, prop in sect["properties"].items():
            assert prop.get("description"), f"{name}.{key}"


def test_the_bridge_id_rule_is_the_registrys() -> None:
    from device_registry.inventory.provisioning import EDGE_CLIENT_PREFIX

    assert centralconf.EDGE_CLIENT_PREFIX == EDGE_CLIENT_PREFIX


@pytest.mark.parametrize(
    ("content", "secret", "problem"),
    [
        (b"s3cret\n", "s3cret", None),
        (b" pass word \r\n", " pass word ", None),  # only the line end is not the secret's
        (b"x" * (64 * 1024 + 1), None, "is longer than 65536 bytes: not a secret"),
        (b"\xff\xfe", None, "is not UTF-8 text"),
    ],
)
def test_a_secret_file_is_read_as_written(
    tmp_path: Path, content: bytes, secret: str | None, problem: str | None
) -> None:
    pw = tmp_path / "pw"
    pw.write_bytes(content)
    path = _write(tmp_path, f"mqtt:\n  password_file: {pw}\n")
    if problem is None:
        assert settle(load_central(path), {}, {"mqtt_password_env"})["mqtt_password"] == secret
        return
    with pytest.raises(ConfigError) as err:
        settle(load_central(path), {}, {"mqtt_password_env"})
    assert str(err.value) == f"{path}:2: mqtt -> password_file: {pw} {problem}"


def test_defaults_resolve_without_a_file() -> None:
    out = settle(Loaded(), {}, {"mqtt_password_env", "db_url", "data_dir"})
    assert out == {"mqtt_password_env": None, "mqtt_password": None, "db_url": None,
                   "data_dir": "var/central"}  # fmt: skip


# --- real processes ------------------------------------------------------------------------


def _example_copy(tmp_path: Path, **replace: str) -> Path:
    """The shipped example, its text changed at ``old=new`` places that must each occur once."""
    text = EXAMPLE.read_text()
    for old, new in replace.items():
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return _write(tmp_path, text)


def _start(path: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gridwatch.top.cli", "central", "run", "-c", str(path)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, env={**os.environ, **(env or {})},
    )  # fmt: skip


def _get_until(proc: subprocess.Popen[bytes], url: str, log: Path, ok: Any) -> bytes:
    """GET ``url`` until ``ok(body)`` holds; the process must stay up meanwhile. The deadline
    is generous: a cold start imports for seconds on a loaded machine."""
    deadline = time.monotonic() + 60
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"exited {proc.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                body: bytes = r.read()
            if ok(body):
                return body
        except (urllib.error.URLError, ConnectionError):
            pass  # not listening yet; or 503 while a part is still connecting
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never answered as expected:\n{log.read_text()}")
        time.sleep(0.1)


def _health_until(proc: subprocess.Popen[bytes], port: int, log: Path, ok: Any) -> dict[str, Any]:
    """``/health`` of a registry API, once ``ok(its JSON)`` holds."""
    body = _get_until(proc, f"http://127.0.0.1:{port}/health", log, lambda b: ok(json.loads(b)))
    found: dict[str, Any] = json.loads(body)
    return found


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def test_central_run_from_the_shipped_example_answers_health(tmp_path: Path) -> None:
    http, mqtt = free_port(), free_port()
    path = _example_copy(tmp_path, **{
        "data_dir: var/central": f"data_dir: {tmp_path / 'data'}",
        "  port: 8080": f"  port: {http}", "  port: 1883": f"  port: {mqtt}",
    })  # fmt: skip
    log = tmp_path / "central.log"
    proc = _start(path, log)
    try:
        body = _health_until(proc, http, log, lambda b: b["parts"]["bridge"]["connected"])
        assert body["status"] == "ok"
        assert (tmp_path / "data" / "telemetry.db").exists()  # data_dir came from the file
    finally:
        _stop(proc)
    assert proc.returncode == 0


def test_central_run_reaches_a_password_broker_with_the_secret_file_the_config_names(
    tmp_path: Path,
) -> None:
    broker = Mosquitto(tmp_path / "mq", users={"centre": "s3cret-pw"}).start()
    http = free_port()
    pwfile = tmp_path / "mqtt.pw"
    pwfile.write_text("s3cret-pw\n")
    path = _example_copy(tmp_path, **{
        "data_dir: var/central": f"data_dir: {tmp_path / 'data'}",
        "  port: 8080": f"  port: {http}",
        "  # endpoints:\n  #   - {host: mq-a.ops.example, port: 1883}":
            f"  endpoints:\n    - {{host: 127.0.0.1, port: {broker.port}}}",
        "  # username: gridwatch-central": "  username: centre",
        "  # password_env: GRIDWATCH_MQTT_CENTRAL_PASSWORD   # or password_file: /run/secrets/mqtt":
            f"  password_file: {pwfile}",
    })  # fmt: skip
    log = tmp_path / "central.log"
    proc = _start(path, log)
    try:
        body = _health_until(proc, http, log, lambda b: b["parts"]["bridge"]["connected"])
        assert body["parts"]["registry downlink"]["connected"] is True
        assert "s3cret-pw" not in log.read_text()
    finally:
        _stop(proc)
        broker.stop()


def test_one_file_serves_registry_serve_and_bridge_run_each_reading_its_sections(
    tmp_path: Path, mosquitto: Mosquitto, prefix: str
) -> None:
    http, metrics = free_port(), free_port()
    path = _write(
        tmp_path,
        f"""\
data_dir: {tmp_path / "data"}
http: {{port: {http}}}
mqtt:
  endpoints: [{{host: 127.0.0.1, port: {mosquitto.port}}}]
  prefix: {prefix}
  client_id: c-{prefix}
registry: {{dynsec: false}}
timeseries: {{history_hours: 2}}
bridge: {{metrics_port: {metrics}}}
""",
    )
    blog, rlog = tmp_path / "bridge.log", tmp_path / "registry.log"
    bridge = subprocess.Popen(
        [sys.executable, "-m", "gridwatch.top.cli", "bridge", "run", "-c", str(path),
         "--bridge-id", f"b-{prefix}"],
        stdout=blog.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    registry = subprocess.Popen(
        [sys.executable, "-m", "gridwatch.top.cli", "registry", "serve", "-c", str(path)],
        stdout=rlog.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        body = _health_until(registry, http, rlog, lambda b: "registry downlink" in b["parts"])
        assert "bridge" not in body["parts"]  # the registry alone runs no bridge
        # the bridge's /metrics on http.host and bridge.metrics_port, its lanes on the file's broker
        _get_until(bridge, f"http://127.0.0.1:{metrics}/metrics", blog,
                   lambda b: b"gridwatch_bridge_connected 1.0" in b)  # fmt: skip
        assert f"bridge: broker 127.0.0.1:{mosquitto.port}, prefix '{prefix}'" in blog.read_text()
    finally:
        _stop(registry)
        _stop(bridge)


def test_building_the_parser_does_not_load_the_config_models() -> None:
    """``gridwatch health`` and the installer commands build the same parser: the centre's
    models (pydantic) load only when a centre subcommand parses its options."""
    code = ("import sys; from gridwatch.top.cli import build_parser; build_parser(); "
            "print('gridwatch.ground.centralconf' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_help_names_each_flags_key_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["central", "run", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("[file: http.port; default 8080]", "[file: mqtt.endpoints]",
                  "[file: registry.dynsec]", "[file: timeseries.history_hours; default 48.0]"):  # fmt: skip
        assert shown in text, shown
