"""The Modbus RTU driver over a socat virtual serial pair against a pymodbus serial server.

Pseudo-terminals ignore the baud rate, so this checks framing, the shared line and fault
isolation, not serial timing (the baud-throttled simulator is in test_rtu_timing.py).
"""

from __future__ import annotations

import asyncio
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer

from drivers.modbus import ModbusDriver
from drivers.transport import frame_gap_s
from gridwatch.ground.contract import Quality
from gridwatch.top.sim.modbus import SimUnit
from tests._drivers_helpers import Outcomes, gateway, wait_for_output

pytestmark = pytest.mark.skipif(not shutil.which("socat"), reason="needs Debian socat")


@pytest.fixture
def line(tmp_path: Path) -> Iterator[tuple[str, str]]:
    a, b = str(tmp_path / "A"), str(tmp_path / "B")
    socat = subprocess.Popen(
        ["socat", "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for_output(socat, "starting data transfer loop", 10)
        yield a, b
    finally:
        socat.terminate()
        socat.wait(timeout=10)


async def test_rtu_line_polls_and_isolates_a_dead_device(line: tuple[str, str]) -> None:
    client_end, server_end = line
    bus = {"type": "modbus_rtu", "id": "r", "port": client_end, "baudrate": 9600,
           "timeout_s": 0.3}  # fmt: skip
    devices = gateway([bus], [{"id": f"wl{u}", "profile": "water-level-ultrasonic", "bus": "r",
                               "unit_id": u, "interval_s": 0.5} for u in (1, 2, 3)])  # fmt: skip
    units = {d.id: SimUnit(d, random.Random(0)) for d in devices}
    units["wl2"].alive.clear()
    server = ModbusSerialServer([u.simdevice() for u in units.values()], port=server_end,
                                framer=FramerType.RTU, baudrate=9600)  # fmt: skip
    await server.serve_forever(background=True)
    driver = ModbusDriver(devices[0].bus, devices)  # type: ignore[arg-type]
    assert driver.transport.gap_s == pytest.approx(3.5 * 10 / 9600)
    sink = Outcomes()
    task = asyncio.create_task(driver.run(sink))
    try:
        await sink.wait_for(lambda: all(sink.count(d.id) >= 4 for d in devices), 15)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        units["wl2"].alive.set()
        await server.shutdown()  # type: ignore[no-untyped-call]
    for ok in ("wl1", "wl3"):
        assert all(o.ok for o in sink.outcomes(ok)), ok
    assert not any(o.ok for o in sink.outcomes("wl2"))
    assert {s.quality for o in sink.outcomes("wl2") for s in o.samples} == {Quality.COMM_ERROR}


def test_frame_gap_follows_the_baud_rate() -> None:
    assert frame_gap_s(9600) == pytest.approx(3.5 * 10 / 9600)  # 8N1: 10 bits a character
    assert frame_gap_s(9600, parity="E") == pytest.approx(3.5 * 11 / 9600)
    assert frame_gap_s(115200) == 0.00175  # fixed above 19200 baud
