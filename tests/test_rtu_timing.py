"""Serial timing: the wire model (tables), the simulator's answers (tables), and the RTU driver
over a baud-throttled socat line keeping up with what the baud rate allows."""

from __future__ import annotations

import asyncio
import random
import shutil
from pathlib import Path

import pytest

from drivers.modbus import ModbusDriver
from gridwatch.ground.contract import Quality
from gridwatch.ground.gatewayconf import ModbusRtuBus
from gridwatch.top.sim import RtuField, SimUnit
from gridwatch.top.sim.rtu import answer
from gridwatch.top.sim.rtuwire import (
    LineTiming,
    crc16,
    request_bytes,
    request_length,
    response_bytes,
)
from tests._drivers_helpers import Outcomes, gateway

needs_socat = pytest.mark.skipif(not shutil.which("socat"), reason="needs Debian socat")

# (baud, bytesize, parity, stopbits, fc, count, request bytes, response bytes, exchange ms)
# exchange = (request + response) bytes x bits per char / baud + 2 x 3.5-char gaps
TIMING = [
    (9600, 8, "N", 1, 3, 1, 8, 7, (15 * 10 + 7 * 10) / 9600 * 1000),
    (9600, 8, "N", 1, 3, 10, 8, 25, (33 * 10 + 7 * 10) / 9600 * 1000),
    (9600, 8, "E", 1, 3, 10, 8, 25, (33 * 11 + 7 * 11) / 9600 * 1000),
    (9600, 8, "N", 2, 4, 125, 8, 255, (263 * 11 + 7 * 11) / 9600 * 1000),
    (19200, 8, "E", 1, 1, 9, 8, 7, (15 * 11 + 7 * 11) / 19200 * 1000),
    (2400, 7, "E", 1, 2, 16, 8, 7, (15 * 10 + 7 * 10) / 2400 * 1000),
    (38400, 8, "N", 1, 16, 4, 17, 8, 25 * 10 / 38400 * 1000 + 2 * 1.75),  # fixed gap
    (115200, 8, "N", 1, 6, 1, 8, 8, 16 * 10 / 115200 * 1000 + 2 * 1.75),
    (9600, 8, "N", 1, 15, 10, 11, 8, (19 * 10 + 7 * 10) / 9600 * 1000),
    (9600, 8, "N", 1, 5, 1, 8, 8, (16 * 10 + 7 * 10) / 9600 * 1000),
]


@pytest.mark.parametrize(("baud", "size", "parity", "stop", "fc", "count", "req", "resp", "ms"),
                         TIMING)  # fmt: skip
def test_line_time_of_one_exchange(
    baud: int, size: int, parity: str, stop: int, fc: int, count: int, req: int, resp: int,
    ms: float,
) -> None:  # fmt: skip
    timing = LineTiming(baud, size, parity, stop)
    assert request_bytes(fc, count) == req
    assert response_bytes(fc, count) == resp
    assert timing.exchange_s(req, resp) * 1000 == pytest.approx(ms)
    assert timing.answer_s(req, resp) == pytest.approx(timing.exchange_s(req, resp) - timing.gap_s)


def test_turnaround_delays_the_answer() -> None:
    fast, slow = LineTiming(9600), LineTiming(9600, turnaround_s=0.005)
    assert slow.answer_s(8, 7) - fast.answer_s(8, 7) == pytest.approx(0.005)


@pytest.mark.parametrize(("frame", "crc"), [
    ("01030000000a", "c5cd"),
    ("1103006b0003", "7687"),  # the example of the Modbus serial-line guide
    ("", "ffff"),
])  # fmt: skip
def test_crc(frame: str, crc: str) -> None:
    assert crc16(bytes.fromhex(frame)).hex() == crc


@pytest.mark.parametrize(("buffer", "length"), [
    ("01", None), ("0103", 8), ("0106", 8), ("011000000002", None), ("01100000000204", 13),
    ("010f0000000a02", 11), ("0107", 0),
])  # fmt: skip
def test_request_length(buffer: str, length: int | None) -> None:
    assert request_length(bytes.fromhex(buffer)) == length


SIM_PROFILE = {
    "id": "rtu-target", "name": "sim target", "kind": "test", "protocol": "modbus",
    "interval_s": 1,
    "points": {
        "a": {"table": "holding", "address": 10},
        "b": {"table": "holding", "address": 12, "data_type": "int32"},
        "c": {"table": "coil", "address": 3, "data_type": "bool", "writable": True},
        "t": {"table": "input", "address": 0, "scale": 0.1},
    },
}  # fmt: skip

# (request PDU, response PDU): registers 10..13 hold a=7, gap=0, b=-2 (0xFFFF 0xFFFE)
ANSWERS = [
    ("03000a0004", "030800070000fffffffe"),
    ("03000c0002", "0304fffffffe"),
    ("0300090002", "8302"),  # below the first mapped register
    ("03000a0005", "8302"),  # past the last
    ("03000a0000", "8303"),  # zero registers
    ("0400000001", "0402007b"),
    ("0100030001", "010101"),
    ("0500030000", "0500030000"),
    ("0600ff0001", "8602"),
    ("07", "8701"),  # read exception status: not served
]


@pytest.mark.parametrize(("request_pdu", "response_pdu"), ANSWERS)
def test_simulated_device_answers(request_pdu: str, response_pdu: str) -> None:
    (device,) = gateway(
        [{"type": "modbus_rtu", "id": "r", "port": "/dev/null"}],
        [{"id": "d", "profile": "rtu-target", "bus": "r"}], [SIM_PROFILE],
    )  # fmt: skip
    unit = SimUnit(device, random.Random(0))
    unit.words("a", 7)
    unit.words("b", -2)
    unit.words("c", True)
    unit.words("t", 12.3)
    assert answer(unit, bytes.fromhex(request_pdu)).hex() == response_pdu


def test_simulated_writes_land() -> None:
    (device,) = gateway(
        [{"type": "modbus_rtu", "id": "r", "port": "/dev/null"}],
        [{"id": "d", "profile": "rtu-target", "bus": "r"}], [SIM_PROFILE],
    )  # fmt: skip
    unit = SimUnit(device, random.Random(0))
    assert answer(unit, bytes.fromhex("10000c00020400010002")).hex() == "10000c0002"
    assert answer(unit, bytes.fromhex("050003ff00")).hex() == "050003ff00"
    assert answer(unit, bytes.fromhex("0300000001")).hex() == "8302"  # a 10..13 only
    assert answer(unit, bytes.fromhex("03000c0002")).hex() == "030400010002"
    assert answer(unit, bytes.fromhex("0100030001")).hex() == "010101"


@needs_socat
async def test_driver_keeps_up_with_the_baud_rate(tmp_path: Path) -> None:
    """Twelve devices polled faster than 9600 baud allows: the line never idles, so the
    driver's request rate is measured against the physical one (the bench asks for 90%)."""
    bus = {"type": "modbus_rtu", "id": "r", "port": str(tmp_path / "ttyA"), "baudrate": 9600,
           "timeout_s": 0.2}  # fmt: skip
    devices = gateway([bus], [{"id": f"wl{u}", "profile": "water-level-ultrasonic", "bus": "r",
                               "unit_id": u, "interval_s": 0.25} for u in range(1, 13)])  # fmt: skip
    rtu_bus = devices[0].bus
    assert isinstance(rtu_bus, ModbusRtuBus)
    timing = LineTiming(9600)
    # the profile's three points sit in holding 0..3: one read of four registers per poll
    exchange_s = timing.exchange_s(request_bytes(3, 4), response_bytes(3, 4))
    async with RtuField(devices) as field:
        driver = ModbusDriver(rtu_bus, devices)
        assert [(r.start, r.count) for r in driver.pollers["wl1"].plan.requests] == [(0, 4)]
        sink = Outcomes()

        def polls() -> list[tuple[float, bool]]:
            return sorted((t, o.ok) for d in devices for t, o in sink.by_device[d.id])

        task = asyncio.create_task(driver.run(sink))
        try:
            await sink.wait_for(lambda: len(polls()) >= 60, 15)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        line = field.lines["r"]
    done = polls()
    assert all(ok for _, ok in done)
    window = done[10:]  # after the first round, every device has a poll waiting
    rate = (len(window) - 1) / (window[-1][0] - window[0][0])
    assert rate >= 0.8 / exchange_s, f"{rate:.1f} polls/s of {1 / exchange_s:.1f} possible"
    assert rate <= 1.01 / exchange_s  # the simulator holds the line as long as a real one
    assert line.requests >= len(done)
    fastest = min(o.response_ms or 0 for d in devices for o in sink.outcomes(d.id))
    assert fastest >= timing.answer_s(8, 13) * 1000 * 0.99  # no answer beats the wire
    level = sink.outcomes("wl3")[-1].samples[0]
    assert level.point == "level" and level.quality is Quality.GOOD
    assert 1.1 <= level.value <= 3.3  # type: ignore[operator]
