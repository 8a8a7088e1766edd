"""gridwatch as a wheel: built from the tree, installed (not editable) into a fresh virtual
environment, and run from a directory outside the tree, it finds the profiles, gateway configs,
catalogue, dashboard files and migrations it ships, and the demo raises its first alert.

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

from gridwatch.ground.shipped import firmware, shipped
from gridwatch.top.cli import main as cli

ROOT = Path(__file__).resolve().parent.parent
UV = Path(sys.executable).parent / "uv"  # installed by `make venv`
SOURCES = ("pyproject.toml", "README.md", "gridwatch", "drivers", "edge", "cloud_bridge",
           "device_registry", "firmware_configs")  # fmt: skip
SHIPPED_YAML = sorted(
    p.relative_to(ROOT).as_posix()
    for folder in ("profiles", "gateways", "catalogue")
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
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment outside the tree with gridwatch's wheel installed: its bin folder."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, src / name)
    run(UV, "build", "--wheel", "--out-dir", base / "dist", src, cwd=base, timeout=180)
    (wheel,) = (base / "dist").glob("gridwatch-*.whl")
    # the same interpreter; dependencies come from uv's cache or the registry, as in `make venv`
    run(UV, "venv", "--python", sys.executable, base / "venv", cwd=base)
    python = base / "venv" / "bin" / "python"
    # compiled as pip would: a first start that compiles every module is not what users see
    run(
        UV, "pip", "install", "--compile-bytecode", "--python", python, wheel, cwd=base, timeout=180
    )
    shutil.rmtree(src)  # nothing left to fall back on
    return python.parent


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
def test_the_systemd_units_ship_in_the_wheel(installed: Path, outside: Path) -> None:
    found = run(installed / "python", "-c", "from gridwatch.ground.shipped import shipped; "
                "print(sorted(p.name for p in shipped('firmware_configs', 'systemd').iterdir()))",
                cwd=outside)  # fmt: skip
    assert found.strip() == str(
        ["gridwatch-bridge.service", "gridwatch-edge.service", "gridwatch-registry.service"]
    )
