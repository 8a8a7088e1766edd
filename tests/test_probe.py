"""``gridwatch probe modbus`` against ``gridwatch sim`` running as its own process."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridwatch.top import probe
from gridwatch.top.cli import build_parser
from tests._drivers_helpers import free_port, wait_for_output

PROFILE = """
profile:
  id: probe-target
  name: a converter with a byte-swapped float
  kind: test
  protocol: modbus
  interval_s: 1
  points:
    level: {table: holding, address: 0, data_type: float32, word_order: little}
    code: {table: holding, address: 2, data_type: uint16}
  sim:
    level: {base: 123.456}
    code: {base: 42}
"""


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    root = tmp_path_factory.mktemp("probe")
    (root / "profiles").mkdir()
    (root / "profiles" / "target.yaml").write_text(PROFILE)
    port = free_port()
    (root / "gw.yaml").write_text(
        f"gateway: {{id: gw-probe}}\nprofiles_dir: profiles\n"
        f"buses: [{{type: modbus_tcp, id: b, host: 127.0.0.1, port: {port}, timeout_s: 0.5}}]\n"
        "devices:\n"
        "  - {id: a, profile: probe-target, bus: b, unit_id: 1}\n"
        "  - {id: b, profile: probe-target, bus: b, unit_id: 7}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridwatch.top.cli", "sim", "-c", str(root / "gw.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    try:
        wait_for_output(proc, "sim: serving", 20)
        yield port
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert proc.stdout is not None
        out = proc.stdout.read()
    assert proc.returncode == 0
    assert out == ""  # nothing chatty on stdout


def run_probe(*argv: str) -> tuple[int, str]:
    args = build_parser().parse_args(["probe", "modbus", *argv])
    out = io.StringIO()
    return probe.main(args, out), out.getvalue()


def cell(table: str, address: int, dtype: str, order: str) -> str:
    lines = table.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("addr")).split()
    for line in lines:
        parts = line.split()
        if parts[:2] == [str(address), dtype]:
            return parts[header.index(order)]
    raise KeyError((address, dtype))


def test_every_layout_side_by_side(sim: int) -> None:
    code, out = run_probe("--port", str(sim), "--unit", "7", "--address", "0", "--count", "3")
    assert code == 0
    assert cell(out, 0, "float32", "CDAB") == "123.456"  # the right column
    assert cell(out, 0, "float32", "ABCD") != "123.456"  # the classic mistake, visible
    assert cell(out, 2, "uint16", "ABCD") == "42"
    assert cell(out, 2, "int16", "BADC") == str(42 << 8)
    assert "raw: 0=0xE979 1=0x42F6 2=0x002A" in out


def test_scan_finds_the_units_that_answer(sim: int) -> None:
    code, out = run_probe("--port", str(sim), "--scan", "--timeout", "0.3")
    assert code == 0
    assert out.split("\n")[:-1] == ["unit 1 answers", "unit 7 answers"]


def test_a_refused_range_reads_nothing_and_exits_1(sim: int) -> None:
    code, _ = run_probe("--port", str(sim), "--unit", "1", "--address", "500", "--count", "2")
    assert code == 1


def test_nothing_listening_exits_1() -> None:
    code, out = run_probe("--port", str(free_port()), "--timeout", "0.2")
    assert (code, out) == (1, "")


@pytest.mark.parametrize("argv", [["--count", "0"], ["--count", "126"],
                                  ["--address", "65535", "--count", "2"]])  # fmt: skip
def test_usage_errors_exit_2(argv: list[str]) -> None:
    assert run_probe(*argv)[0] == 2


def test_unknown_option_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["probe", "modbus", "--table", "coil"])
    assert exc.value.code == 2
