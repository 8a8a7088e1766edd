"""gridwatch as a wheel: built from the tree, installed (not editable) into a fresh virtual
environment, and run from a directory outside the tree, it finds the profiles, gateway configs,
catalogue, dashboard files and migrations it ships, and the demo raises its first alert.
Installed as a gateway installs it, ``gridwatch[edge]`` alone, it runs an edge agent against a
simulator and a real mosquitto without the central stack, and refuses the centre's commands
with the one line that says which extra to install.

The tree is copied first: building writes ``build/`` and ``*.egg-info`` beside the sources."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from gridwatch.ground.contract import Topics
from gridwatch.ground.shipped import firmware, shipped
from gridwatch.top.cli import EXTRAS
from gridwatch.top.cli import main as cli
from gridwatch.top.extras import lacking, missing_extras
from tests._central_helpers import wait_for_log
from tests.fieldkit import gateway_config, listen
from tests.services import Mosquitto

ROOT = Path(__file__).resolve().parent.parent
UV = Path(sys.executable).parent / "uv"  # installed by `make venv`
SOURCES = ("pyproject.toml", "README.md", "gridwatch", "drivers", "edge", "cloud_bridge",
           "device_registry", "firmware_configs")  # fmt: skip
SHIPPED_YAML = sorted(
    p.relative_to(ROOT).as_posix()
    for folder in ("profiles", "gateways", "catalogue", "central", "places")
    for p in (ROOT / "firmware_configs" / folder).glob("*.yaml")
)


def run(*args: str | Path, cwd: Path, timeout: float = 60) -> str:
    done = subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip
    assert done.returncode == 0, f"{args} exited {done.returncode}:\n{done.stdout}{done.stderr}"
    return done.stdout


def _clean_env() -> dict[str, str]:
    """This environment without what points at the source tree or its virtual environment."""
    drop = {"VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PYTHONUNBUFFERED": "1"}


# (lookup, exception, words the message must hold): what a broken installation tells its user
LOOKUP_FAULTS = [
    (lambda: shipped("firmware_configs", "nope"), FileNotFoundError, ["firmware_configs/nope", "reinstall"]),
    (lambda: shipped("device_registry.http", "static", "x.css"), FileNotFoundError, ["device_registry/http/static/x.css"]),
    (lambda: firmware("profile"), ValueError, ["no folder 'profile'", "profiles"]),
]  # fmt: skip


@pytest.mark.parametrize(("lookup", "error", "words"), LOOKUP_FAULTS)
def test_a_missing_shipped_file_is_named(
    lookup: Any, error: type[Exception], words: list[str]
) -> None:
    with pytest.raises(error) as caught:
        lookup()
    for word in words:
        assert word in str(caught.value)


def test_shipped_folders_are_the_checkouts_in_a_checkout() -> None:
    assert firmware("profiles") == ROOT / "firmware_configs" / "profiles"
    assert shipped("device_registry.db.migrations", "script.py.mako").is_file()


def test_config_check_without_files_checks_the_shipped_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli(["config", "check"]) == 0
    checked = sorted(
        Path(line.removesuffix(": ok")).relative_to(ROOT).as_posix()
        for line in capsys.readouterr().out.splitlines()
    )
    assert checked == SHIPPED_YAML


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gridwatch's wheel, built from a copy of the tree that is then removed."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    run(UV, "build", "--wheel", "--out-dir", base / "dist", src, cwd=base, timeout=180)
    (built,) = (base / "dist").glob("gridwatch-*.whl")
    shutil.rmtree(src)  # nothing left to fall back on
    return built


def _venv_with(wheel: Path, extras: str) -> Path:
    """A virtual environment outside the tree with ``gridwatch[extras]`` installed from the wheel:
    its bin folder."""
    venv = wheel.parent.parent / f"venv-{extras}"
    # the same interpreter; dependencies come from uv's cache or the registry, as in `make venv`
    run(UV, "venv", "--python", sys.executable, venv, cwd=wheel.parent)
    python = venv / "bin" / "python"
    # compiled as pip would: a first start that compiles every module is not what users see
    run(UV, "pip", "install", "--compile-bytecode", "--python", python, f"{wheel}[{extras}]",
        cwd=wheel.parent, timeout=180)  # fmt: skip
    return python.parent


@pytest.fixture(scope="module")
def installed(wheel: Path) -> Path:
    """Everything, as on one box that runs the demo: ``gridwatch[all]``."""
    return _venv_with(wheel, "all")


@pytest.fixture(scope="module")
def edge_installed(wheel: Path) -> Path:
    """What a gateway in a street cabinet installs: ``gridwatch[edge]``."""
    return _venv_with(wheel, "edge")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    work = tmp_path / "somewhere-else"
    work.mkdir()
    return work


@pytest.mark.slow
def test_installed_gridwatch_imports_from_site_packages(installed: Path, outside: Path) -> None:
    found = run(installed / "python", "-c", "import gridwatch, firmware_configs; "
                "print(gridwatch.__file__); print(firmware_configs.__file__)", cwd=outside)  # fmt: skip
    for line in found.splitlines():
        assert "/site-packages/" in line and not line.startswith(str(ROOT)), found


@pytest.mark.slow
def test_config_check_without_files_checks_what_ships(installed: Path, outside: Path) -> None:
    out = run(installed / "gridwatch", "config", "check", cwd=outside)
    checked = sorted(
        line.removesuffix(": ok").split("/site-packages/", 1)[1] for line in out.splitlines()
    )
    assert checked == SHIPPED_YAML, out


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_installed_demo_raises_an_alert_and_stops_cleanly(installed: Path, outside: Path) -> None:
    proc = subprocess.Popen(
        [str(installed / "gridwatch"), "demo", "--speedup", "4"],
        cwd=outside, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines = _lines_of(proc)
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 90
        while not any("ALERT RAISED" in line for line in seen):
            left = deadline - time.monotonic()
            assert left > 0, "no alert within 90 s:\n" + "".join(seen) + _logs(outside)
            try:
                line = lines.get(timeout=left)
            except queue.Empty:
                continue
            assert line is not None, (
                "demo ended without an alert:\n" + "".join(seen) + _logs(outside)
            )
            seen.append(line)
        _dashboard_is_served("".join(seen))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, "".join(seen)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state = outside / "var" / "demo"  # the README's promise: under the current directory
    for name in ("central", "sim", "edge"):
        log = (state / f"{name}.log").read_text()
        assert "Traceback" not in log, f"{name}.log:\n{log[-3000:]}"
    assert (state / "central" / "registry.db").is_file()


def _logs(outside: Path) -> str:
    return "".join(
        f"\n--- {log.name} ---\n{log.read_text()[-2000:]}"
        for log in sorted((outside / "var" / "demo").glob("*.log"))
    )


def _dashboard_is_served(banner: str) -> None:
    """The installed registry serves the dashboard's shipped files."""
    url = re.search(r"dashboard +(http://\S+)/dashboard", banner)
    assert url is not None, banner
    for path, needle in (("/dashboard", b"<html"), ("/static/app.js", b"function")):
        with urllib.request.urlopen(url[1] + path, timeout=10) as resp:
            assert needle in resp.read().lower(), path


def _lines_of(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """The process's output lines as they come, then None at its end (read in a thread, so the
    test can wait for a line with a deadline)."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


@pytest.mark.slow
def test_the_sample_device_csv_ships(installed: Path, outside: Path) -> None:
    """docs/registry.md sends installers to it: it must be there for a pip-installed gridwatch."""
    code = ("from firmware_configs import SAMPLES; from gridwatch.ground.shipped import firmware; "
            "print((firmware(SAMPLES) / 'devices.csv').read_text().splitlines()[0])")  # fmt: skip
    out = run(installed / "python", "-c", code, cwd=outside)
    assert out.startswith("gateway,id,profile,bus,unit_id"), out


# Requires-Dist lines as a wheel's METADATA holds them (pyproject.toml's extras, trimmed)
REQUIRES = [
    "pydantic>=2.9",
    'pymodbus>=3.16.1; extra == "edge"',
    "orjson>=3.10 ; extra == 'edge'",
    'aiohttp>=3.10; extra == "metrics"',
    'gridwatch[metrics]; extra == "central"',
    'sqlalchemy[asyncio]>=2.0; extra == "central"',
    'gridwatch[central, edge]; extra == "all"',
    'tomli; python_version < "3.11" and extra == "edge"',
]
# (extra, distributions installed, what it lacks)
LACKING = [
    ("edge", {"pydantic"}, ["pymodbus", "orjson"]),  # another marker is not ours to judge
    ("edge", {"pymodbus", "orjson"}, []),  # the base is not the extra's to check
    ("central", {"sqlalchemy"}, ["aiohttp"]),  # through gridwatch[metrics]
    ("all", set(), ["aiohttp", "sqlalchemy", "pymodbus", "orjson"]),  # extras of extras, once
    ("nope", set(), []),
]


@pytest.mark.parametrize(("extra", "have", "lacks"), LACKING)
def test_what_an_extra_lacks_is_read_from_the_metadata(
    extra: str, have: set[str], lacks: list[str]
) -> None:
    assert lacking(extra, REQUIRES, have.__contains__) == lacks


def test_the_checkout_has_every_extra_a_command_needs() -> None:
    """`make venv` installs all of them: no command is refused in the tree."""
    needed = {extra for extras in EXTRAS.values() for extra in extras} | {"metrics"}
    assert missing_extras(sorted(needed)) == []


# (command, what a gateway's installation answers: one line on stderr, exit status 2)
REFUSED = [
    (["central", "run"], 'gridwatch central run needs the central extra: pip install "gridwatch[central]"'),
    (["registry", "serve"], 'gridwatch registry serve needs the central extra: pip install "gridwatch[central]"'),
    (["bridge", "run", "--bridge-id", "b1"], 'gridwatch bridge run needs the central extra: pip install "gridwatch[central]"'),
    (["demo"], 'gridwatch demo needs the all extra: pip install "gridwatch[all]"'),
    (["edge", "run", "-c", "gw.yaml", "--metrics-port", "9100"],
     'gridwatch edge run --metrics-port needs the metrics extra: pip install "gridwatch[edge,metrics]"'),
]  # fmt: skip
CENTRAL_STACK = ("sqlalchemy", "aiosqlite", "asyncpg", "alembic", "amqtt", "aiohttp",
                 "prometheus-client", "influxdb-client", "cryptography")  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("command", "line"), REFUSED, ids=[" ".join(c[:2]) for c, _ in REFUSED])
def test_a_gateway_install_names_the_extra_a_command_needs(
    edge_installed: Path, outside: Path, command: list[str], line: str
) -> None:
    done = subprocess.run(
        [str(edge_installed / "gridwatch"), *command], cwd=outside, env=_clean_env(),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert (done.returncode, done.stderr, done.stdout) == (2, line + "\n", "")


@pytest.mark.slow
def test_a_gateway_install_speaks_chinese_without_babel(
    edge_installed: Path, outside: Path
) -> None:
    """The compiled catalogues ship in the wheel and are read with the standard library: a
    gateway's install speaks Chinese, and English when asked, with no babel installed."""
    env = {k: v for k, v in _clean_env().items() if k not in ("GRIDWATCH_LANG", "LC_ALL")}
    said = {}
    for lang in ("zh_CN.UTF-8", "en_US.UTF-8"):
        done = subprocess.run(
            [str(edge_installed / "gridwatch"), "probe", "modbus", "--count", "0"], cwd=outside,
            env={**env, "LANG": lang}, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        said[lang] = (done.returncode, done.stderr)
    assert said["zh_CN.UTF-8"] == (
        2,
        "gridwatch probe modbus: --table holding 时 --count 须为 1..125\n",
    )
    assert said["en_US.UTF-8"] == (
        2,
        "gridwatch probe modbus: --count must be 1..125 for --table holding\n",
    )
    assert run(edge_installed / "python", "-c", "import importlib.util as u; print(u.find_spec('babel'))",
               cwd=outside).strip() == "None"  # fmt: skip


@pytest.mark.slow
def test_a_gateway_install_has_no_central_stack(edge_installed: Path, outside: Path) -> None:
    found = run(edge_installed / "python", "-c", "import importlib.metadata as m, sys\n"
                "for name in sys.argv[1:]:\n"
                "    try: m.distribution(name); print(name)\n"
                "    except m.PackageNotFoundError: pass", *CENTRAL_STACK, cwd=outside)  # fmt: skip
    assert found == ""
    for module in ("device_registry", "cloud_bridge.app"):
        done = subprocess.run(
            [str(edge_installed / "python"), "-c", f"import {module}"], cwd=outside,
            env=_clean_env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 1 and "ModuleNotFoundError" in done.stderr, done.stderr
    assert "edge" in run(edge_installed / "gridwatch", "--help", cwd=outside)


@pytest.mark.slow
@pytest.mark.timeout(150)
async def test_a_gateway_install_sends_telemetry(
    edge_installed: Path, outside: Path, tmp_path: Path, mosquitto: Mosquitto, prefix: str
) -> None:
    gw, _, config = gateway_config(tmp_path, mosquitto.port, prefix)
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        async with listen(mosquitto.port, Topics(prefix).telemetry(gw.gateway.id)) as heard:
            for name, args, ready in (
                ("sim", ["sim", "-c", str(config)], b"sim: serving"),
                ("edge", ["edge", "run", "-c", str(config)], b"edge agent"),
            ):
                procs[name] = _started(edge_installed, args, outside / f"{name}.log", ready)
            await heard.wait_for(lambda got: got.on("telemetry"), within_s=60)
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    for name in procs:
        log = (outside / f"{name}.log").read_text()
        assert "Traceback" not in log, f"{name}.log:\n{log[-3000:]}"
    assert procs["edge"].returncode == 0, (outside / "edge.log").read_text()[-3000:]


def _started(bin: Path, args: list[str], log: Path, ready: bytes) -> subprocess.Popen[bytes]:
    """``gridwatch ARGS`` of that installation, run outside the tree, once its log says ready."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(bin / "gridwatch"), *args], cwd=log.parent, env=_clean_env(), stdout=out,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_for_log(proc, log, ready)
    return proc


@pytest.mark.slow
def test_the_systemd_units_ship_in_the_wheel(installed: Path, outside: Path) -> None:
    found = run(installed / "python", "-c", "from gridwatch.ground.shipped import shipped; "
                "print(sorted(p.name for p in shipped('firmware_configs', 'systemd').iterdir()))",
                cwd=outside)  # fmt: skip
    assert found.strip() == str(
        ["gridwatch-bridge.service", "gridwatch-edge.service", "gridwatch-registry.service"]
    )
