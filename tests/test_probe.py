"""``gridwatch probe modbus`` against ``gridwatch sim`` running as its own process."""

from __future__ import annotations

import asyncio
import io
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymodbus.client import AsyncModbusTcpClient

from drivers.errors import ConnectError, DeviceTimeout, ProtocolError, refusal
from gridwatch.ground.gatewayconf import default_profiles_dir
from gridwatch.top import probe
from gridwatch.top.cli import build_parser
from gridwatch.top.sim.rtu import RtuField
from tests._drivers_helpers import free_port, gateway, wait_for_output

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
def field(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """``gridwatch sim`` serving units 1 and 7 (the profile above) and two smoke detectors of
    the shipped profile, units 9 and 10 (10's sounder coil is the coil test's to switch);
    yields the port and the folder of the profiles."""
    root = tmp_path_factory.mktemp("probe")
    (root / "profiles").mkdir()
    (root / "profiles" / "target.yaml").write_text(PROFILE)
    shutil.copy(default_profiles_dir() / "smoke_detector_modbus.yaml", root / "profiles")
    port = free_port()
    (root / "gw.yaml").write_text(
        f"gateway: {{id: gw-probe}}\nprofiles_dir: profiles\n"
        f"buses: [{{type: modbus_tcp, id: b, host: 127.0.0.1, port: {port}, timeout_s: 0.5}}]\n"
        "devices:\n"
        "  - {id: a, profile: probe-target, bus: b, unit_id: 1}\n"
        "  - {id: b, profile: probe-target, bus: b, unit_id: 7}\n"
        "  - {id: s, profile: smoke-detector-modbus, bus: b, unit_id: 9}\n"
        "  - {id: t, profile: smoke-detector-modbus, bus: b, unit_id: 10}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gridwatch.top.cli", "sim", "-c", str(root / "gw.yaml")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    try:
        wait_for_output(proc, "sim: serving", 20)
        yield port, root / "profiles"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert proc.stdout is not None
        out = proc.stdout.read()
    assert proc.returncode == 0
    assert out == ""  # nothing chatty on stdout


@pytest.fixture(scope="module")
def sim(field: tuple[int, Path]) -> int:
    return field[0]


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
    assert out.split("\n")[:-1] == ["unit 1 answers", "unit 7 answers", "unit 9 answers",
                                   "unit 10 answers"]  # fmt: skip


def test_nothing_listening_exits_1_and_says_where(capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code, out = run_probe("--port", str(port), "--timeout", "0.2")
    assert (code, out) == (1, "")
    assert capsys.readouterr().err == (
        f"Cannot connect to 127.0.0.1:{port}: check the address, the port and the network\n"
    )


FAILURES: list[tuple[list[str], int, str]] = [
    (["--unit", "1", "--address", "500", "--count", "2"], 4,
     "Holding registers 500..501 do not exist on unit 1 (Modbus exception 0x02: illegal data "
     "address): check the address in the device's register map"),
    (["--unit", "7", "--address", "40100", "--count", "1"], 4,
     "Holding register 40100 does not exist on unit 7 (Modbus exception 0x02: illegal data "
     "address): check the address in the device's register map; manuals often number holding "
     "registers from 40001, which is address 0 here: 40100 would be --address 99"),
    (["--unit", "9", "--table", "discrete", "--address", "5"], 4,
     "Discrete inputs 5..8 do not exist on unit 9 (Modbus exception 0x02"),
    (["--unit", "42"], 1,
     "The converter at 127.0.0.1:{port} answered but unit 42 behind it did not (Modbus "
     "exception 0x0b: gateway target device failed to respond): check the unit id, the RS-485 "
     "wiring and the converter's baud rate and parity"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "code", "message"), FAILURES)
def test_each_failure_has_its_exit_code_and_says_what_it_means(
    sim: int, capsys: pytest.CaptureFixture[str], argv: list[str], code: int, message: str
) -> None:
    got, out = run_probe("--port", str(sim), *argv)
    assert (got, out) == (code, "")
    assert message.format(port=sim) in capsys.readouterr().err


def req(table: str = "holding", address: int = 100, count: int = 2, serial: bool = False) -> (
    probe.Request
):  # fmt: skip
    return probe.Request("/dev/ttyUSB0" if serial else "10.0.0.5:502", 7, table, address, count,
                         0.5, serial)  # fmt: skip


EXPLAINED: list[tuple[Exception, probe.Request, str]] = [
    (refusal(0x01, device_id="", address=0), req("input"),
     "Unit 7 does not serve input registers (function 4) (Modbus exception 0x01: illegal "
     "function): try another --table, as its manual's register map lists them"),
    (refusal(0x02, device_id="", address=0), req("coil", 3, 1),
     "Coil 3 does not exist on unit 7 (Modbus exception 0x02: illegal data address): check the "
     "address in the device's register map"),
    (refusal(0x02, device_id="", address=0), req("input", 30002, 1),
     "Input register 30002 does not exist on unit 7 (Modbus exception 0x02: illegal data "
     "address): check the address in the device's register map; manuals often number input "
     "registers from 30001, which is address 0 here: 30002 would be --address 1"),
    (refusal(0x03, device_id="", address=0), req(count=125),
     "Unit 7 refused reading holding registers 100..224 (Modbus exception 0x03: illegal data "
     "value): the count may be more than it serves in one request; try a smaller --count"),
    (refusal(0x04, device_id="", address=0), req(),
     "Unit 7 failed while reading holding registers 100..101 (Modbus exception 0x04: server "
     "device failure): the device reports an internal fault"),
    (refusal(0x06, device_id="", address=0), req(),
     "Unit 7 is busy (Modbus exception 0x06: server device busy): try again in a moment"),
    (refusal(0x0A, device_id="", address=0), req(),
     "The converter at 10.0.0.5:502 answered but has no path to unit 7 (Modbus exception 0x0a: "
     "gateway path unavailable): check its routing or serial-port settings"),
    (refusal(0x0B, device_id="", address=0), req(),
     "The converter at 10.0.0.5:502 answered but unit 7 behind it did not (Modbus exception "
     "0x0b: gateway target device failed to respond): check the unit id, the RS-485 wiring and "
     "the converter's baud rate and parity"),
    (refusal(0x4D, device_id="", address=0), req(),
     "Unit 7 refused holding registers 100..101 (Modbus exception 0x4d: unknown exception)"),
    (ConnectError("cannot connect to probe"), req(),
     "Cannot connect to 10.0.0.5:502: check the address, the port and the network"),
    (DeviceTimeout("no answer in time"), req(serial=True),
     "No answer from unit 7 at /dev/ttyUSB0 within 0.5 s: check the unit id, wiring, baud rate "
     "and parity"),
    (DeviceTimeout("no answer in time"), req(),
     "No answer from unit 7 at 10.0.0.5:502 within 0.5 s: check the unit id, and that nothing "
     "else holds the device's only connection"),
    (ProtocolError("unexpected function code"), req(),
     "Unit 7 at 10.0.0.5:502: unexpected function code"),
]  # fmt: skip


@pytest.mark.parametrize(("error", "request_", "expected"), EXPLAINED)
def test_every_failure_in_words(error: Exception, request_: probe.Request, expected: str) -> None:
    assert isinstance(error, probe.DriverError)
    assert probe.explain(error, request_) == expected
    assert probe.exit_code(error) == (1 if isinstance(error, probe.CommunicationError) else 4)


async def switch_coil(port: int, unit: int, address: int, on: bool) -> None:
    client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=3, retries=0)
    await client.connect()
    try:
        assert not (await client.write_coil(address, on, device_id=unit)).isError()
    finally:
        client.close()


def test_a_coil_reads_as_on_or_off(sim: int) -> None:
    """The smoke detector's sounder is coil 0."""
    for on in (True, False):
        asyncio.run(switch_coil(sim, 10, 0, on))
        code, out = run_probe("--port", str(sim), "--unit", "10", "--table", "coil",
                              "--count", "1")  # fmt: skip
        assert code == 0
        assert out.splitlines() == ["unit 10 coil 0", f"     0 {'on' if on else 'off'}"]


def rows(out: str) -> dict[str, list[str]]:
    """The profile table's rows by point name; a 'not read' row keeps its text whole."""
    table = {}
    for line in out.splitlines()[2:]:
        name, *rest = line.split()
        text = " ".join(rest)
        table[name] = [text] if "not read:" in text else rest
    return table


def test_a_shipped_profile_reads_as_the_edge_would(sim: int) -> None:
    code, out = run_probe("--port", str(sim), "--unit", "9", "--profile", "smoke-detector-modbus")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == "unit 9 as smoke-detector-modbus (Photoelectric smoke detector, Modbus RTU)"
    got = rows(out)
    assert list(got) == ["obscuration", "alarm", "fault", "battery", "sounder"]
    # each value with its point's decimals (the dashboard's), bits and coils as on/off
    assert got["battery"] == ["input", "3", "0x012C", "3.00", "V", "good"]  # 300 x 0.01 V
    assert got["alarm"] == ["input", "2", "bit", "0", "0x0000", "off", "good"]
    assert got["fault"] == ["input", "2", "bit", "1", "0x0000", "off", "good"]
    assert got["sounder"] == ["coil", "0", "0", "off", "good"]
    table, where, _, _, value, unit, quality = got["obscuration"]
    assert (table, where, unit, quality) == ("input", "0..1", "%/m", "good")
    assert 0.0 <= float(value) <= 1.0  # base 0.3 %/m with a little noise
    assert len(value.partition(".")[2]) == 2, value  # not float32's 0.3197032


def test_a_profile_file_reads_too_and_a_refused_point_exits_4(
    field: tuple[int, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    port, profiles = field
    target = str(profiles / "target.yaml")
    code, out = run_probe("--port", str(port), "--unit", "7", "--profile", target)
    assert code == 0, out
    assert rows(out)["level"] == [
        "holding",
        "0..1",
        "0xE979",
        "0x42F6",
        "123.46",
        "good",
    ]  # 2 decimals: a float point
    assert rows(out)["code"] == ["holding", "2", "0x002A", "42", "good"]
    # a smoke detector has no holding registers: both points refused, each named
    code, out = run_probe("--port", str(port), "--unit", "9", "--profile", target)
    assert code == 4  # refused: the table of every command (docs/cli.md)
    assert rows(out)["level"] == ["holding 0..1 not read: Holding registers 0..1 do not "
                                  "exist on unit 9 (Modbus exception 0x02: illegal data address): "
                                  "check the address in the device's register map"]  # fmt: skip
    assert "unit 9 refused some points of probe-target" in capsys.readouterr().err


def test_a_profile_on_a_silent_unit_exits_1(sim: int, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_probe("--port", str(sim), "--unit", "42", "--profile", "smoke-detector-modbus")
    assert code == 1
    assert len(out.splitlines()) == 3  # stops at the first point: the rest would wait as long
    assert "unit 42 behind it did not" in capsys.readouterr().err


USAGE: list[tuple[list[str], str]] = [
    (["--count", "0"], "--count must be 1..125 for --table holding"),
    (["--count", "126"], "--count must be 1..125 for --table holding"),
    (["--table", "coil", "--count", "2001"], "--count must be 1..2000 for --table coil"),
    (["--address", "65535", "--count", "2"], "--address + --count at most 65536"),
    (["--address", "-1"], "--address must be 0 or more"),
    (["--unit", "248"], "--unit must be 0..247"),
    (["--profile", "smoke-detector-modbus", "--scan"], "give one of them"),
    (["--profile", "no-such-thing"], "no shipped profile 'no-such-thing'; Modbus profiles "
     "shipped: gas-detector"),
    (["--profile", "smoke-detector-mqtt"], "is an MQTT profile"),
    (["--profile", "/nonexistent/p.yaml"],
     "profile /nonexistent/p.yaml: (top level): cannot read: No such file"),
]  # fmt: skip


@pytest.mark.parametrize(("argv", "message"), USAGE)
def test_usage_errors_exit_2_and_say_why(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run_probe(*argv)[0] == 2
    assert message in capsys.readouterr().err


@pytest.mark.skipif(not shutil.which("socat"), reason="needs Debian socat")
async def test_a_serial_line_reads_and_a_silent_unit_times_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """RTU over a socat pair: on a serial line a missing unit is silence, not an exception."""
    port = str(tmp_path / "ttyRS485")
    bus = {"type": "modbus_rtu", "id": "r", "port": port, "baudrate": 19200, "timeout_s": 0.3}
    devices = gateway([bus], [{"id": "sd", "profile": "smoke-detector-modbus", "bus": "r",
                               "unit_id": 3}])  # fmt: skip
    serial = ("--serial", port, "--baudrate", "19200", "--timeout", "0.3")
    async with RtuField(devices):
        coil = await asyncio.to_thread(run_probe, *serial, "--unit", "3", "--table", "coil",
                                       "--count", "1")  # fmt: skip
        profile = await asyncio.to_thread(run_probe, *serial, "--unit", "3", "--profile",
                                          "smoke-detector-modbus")  # fmt: skip
        silent = await asyncio.to_thread(run_probe, *serial, "--unit", "4")
    assert coil == (0, "unit 3 coil 0\n     0 off\n")
    assert profile[0] == 0 and rows(profile[1])["battery"][-3:] == ["3.00", "V", "good"]
    assert silent == (1, "")
    assert capsys.readouterr().err == (
        f"No answer from unit 4 at {port} within 0.3 s: check the unit id, wiring, baud rate "
        "and parity\n"
    )


def test_a_broken_profile_file_is_a_usage_error_that_says_where(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(PROFILE.replace("data_type: uint16", "data_type: uint17"))
    assert run_probe("--profile", str(broken))[0] == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gridwatch probe modbus: profile {broken}:10: profile -> points -> "
                          "code -> data_type: ")  # fmt: skip
    assert "(got 'uint17')" in err


def test_unknown_option_exits_2() -> None:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["probe", "modbus", "--table", "register"])
    assert exc.value.code == 2


def test_help_lists_the_exit_codes() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "gridwatch.top.cli", "probe", "modbus", "--help"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    flat = " ".join(out.split())
    for part in ("exit status: 0 read;", "1 nothing answered", "2 bad arguments",
                 "4 the unit answered with a Modbus exception",
                 "coil", "--profile NAME"):  # fmt: skip
        assert part in flat, part
