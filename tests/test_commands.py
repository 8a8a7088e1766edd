"""A command's state as the API shows it (a command nobody answered in time is expired), and
what value each kind of point accepts."""

from __future__ import annotations

import math
from typing import Any

import pytest

from device_registry.db.tables import CommandRow
from device_registry.errors import Invalid
from device_registry.inventory.commands import check_point, command_view
from gridwatch.ground.profiles import ModbusPoint, ModbusProfile, ValueRange

# (stored state, expires_at, now, shown state)
STATES: list[tuple[str, int | None, int, str]] = [
    ("sent", 61_000, 60_000, "sent"),
    ("sent", 61_000, 61_001, "expired"),  # no answer by the deadline: the gateway won't run it
    ("sent", None, 10**12, "sent"),  # made before commands expired
    ("ok", 61_000, 99_000, "ok"),  # answered in time, read later
    ("failed", 61_000, 99_000, "failed"),
    ("expired", 61_000, 62_000, "expired"),  # the gateway said so itself
]


@pytest.mark.parametrize(("stored", "expires_at", "now", "shown"), STATES)
def test_command_state(stored: str, expires_at: int | None, now: int, shown: str) -> None:
    row = CommandRow(id="c1", gateway_id="gw", device_id="gw:d", point="relay", value=True,
                     requested_by="ops", requested_at=1_000, state=stored, error="",
                     expires_at=expires_at)  # fmt: skip
    assert command_view(row, now).state == shown


def _point(data_type: str, **kw: Any) -> ModbusPoint:
    table = "coil" if data_type == "bool" else "holding"
    extra = {"bit": 3} if data_type == "bit" else {"length": 4} if data_type == "string" else {}
    return ModbusPoint(table=table, address=0, data_type=data_type, writable=True, **extra, **kw)


RELAY = _point("bool")
SETPOINT = _point("int16", scale=0.1, unit="°C", range=ValueRange(min=5, max=30))
# (point, value sent, what the point accepts in the refusal; None = accepted)
VALUES: list[tuple[ModbusPoint, bool | int | float, str | None]] = [
    (RELAY, True, None),
    (RELAY, False, None),
    (RELAY, 12345.678, "accepts true or false; got 12345.678"),  # the sounder of issue 16
    (RELAY, 1, "accepts true or false; got 1"),
    (_point("bit"), True, None),
    (_point("bit"), 0.0, "true or false"),
    (_point("int16"), -32768, None),
    (_point("int16"), 32767, None),
    (_point("int16"), 32768, "whole numbers from -32768 to 32767; got 32768"),
    (_point("int16"), 2.5, "whole numbers from -32768 to 32767; got 2.5"),
    (_point("int16"), 7.0, None),
    (_point("int16"), True, "whole numbers"),
    (_point("uint16"), -1, "whole numbers from 0 to 65535"),
    (_point("uint16"), 65535, None),
    (_point("int32"), 2**31, "whole numbers from -2147483648 to 2147483647"),
    (_point("uint32"), 2**32 - 1, None),
    (_point("int64"), 2**63, "whole numbers"),
    (_point("uint64"), 2**64 - 1, None),
    (_point("uint64"), 10**400, "whole numbers"),
    (_point("float32"), 1.5, None),
    (_point("float32"), 3, None),
    (
        _point("float32"),
        math.nan,
        "numbers from -3.4028234663852886e+38 to 3.4028234663852886e+38; got nan",
    ),
    (_point("float32"), math.inf, "got inf"),
    (_point("float32"), 1e39, "got 1e+39"),
    (_point("float64"), 1e300, None),
    (_point("float64"), -math.inf, "got -inf"),
    (_point("string"), 1, "accepts no commands (a text point)"),
    (SETPOINT, 21.5, None),  # raw 215: the edge scales and rounds
    (SETPOINT, 30, None),
    (SETPOINT, 30.5, "numbers from 5 to 30; got 30.5"),  # the profile's valid range
    (SETPOINT, 4, "numbers from 5 to 30"),
    (_point("uint16", scale=0.01), 655.35, None),
    (_point("uint16", scale=0.01), 655.36, "numbers from 0 to 655.35"),
    (_point("int16", offset=-40), -32808, None),
]


@pytest.mark.parametrize(("point", "value", "refusal"), VALUES)
def test_a_point_takes_only_what_it_accepts(
    point: ModbusPoint, value: bool | int | float, refusal: str | None
) -> None:
    profile = ModbusProfile(id="actuator", name="A", kind="relay", interval_s=10, protocol="modbus",
                            points={"out": point})  # fmt: skip
    if refusal is None:
        check_point(profile, "out", value)
        return
    with pytest.raises(Invalid) as caught:
        check_point(profile, "out", value)
    [(field, message)] = caught.value.problems
    assert field == "value"
    assert message.startswith(f"point 'out' ({point.data_type}) accepts "), message
    assert refusal in message, message


def test_read_only_and_unknown_points_are_refused_before_the_value() -> None:
    profile = ModbusProfile(id="p", name="P", kind="k", interval_s=10, protocol="modbus",
                            points={"level": _point("float32").model_copy(update={"writable": False})})  # fmt: skip
    for point, words in (("level", "not writable"), ("nope", "no point 'nope'")):
        with pytest.raises(Invalid) as caught:
            check_point(profile, point, math.nan)
        assert caught.value.problems[0][0] == "point" and words in caught.value.problems[0][1]
