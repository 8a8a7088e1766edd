"""Driver errors. Library exceptions (pymodbus, aiomqtt) are converted where they enter our
code, in :func:`modbus_errors` and :func:`check_response`, and chained with ``from exc``.

Exception tree::

    DriverError                  anything a driver reports; attributes device_id, address
    ├── BadConfig                a device or bus the driver cannot run (wrong protocol,
    │                            timeout not shorter than the interval)
    ├── UnknownPoint             a command names a device or point the driver doesn't have,
    │                            or a point that is not writable
    ├── EncodeError              a command value cannot be encoded for the point
    ├── PayloadError             an MQTT payload that doesn't parse or match the profile
    ├── CommunicationError       the device could not be asked or did not answer
    │   ├── ConnectError         endpoint unreachable, or the connection dropped
    │   ├── DeviceTimeout        no answer within the bus timeout
    │   ├── ProtocolError        a garbled, truncated or mismatched frame
    │   └── GatewayNoResponse    a TCP gateway says the device behind it is silent (0x0A/0x0B);
    │                            attribute code
    └── DeviceRefused            the device answered with a Modbus exception; attribute code
        ├── IllegalFunction      0x01
        ├── IllegalAddress       0x02: the register does not exist (the planner splits on it)
        ├── IllegalValue         0x03
        ├── DeviceFailure        0x04
        └── DeviceBusy           0x06

``CommunicationError`` means the device is unreachable (samples become COMM_ERROR);
``DeviceRefused`` means it is alive but refuses a request.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException


class DriverError(Exception):
    def __init__(self, message: str, *, device_id: str = "", address: int | None = None) -> None:
        where = f"{device_id}" + (f"@{address}" if address is not None else "")
        super().__init__(f"{where}: {message}" if where else message)
        self.reason = message  # without the device prefix, for outcomes and logs
        self.device_id = device_id
        self.address = address


class BadConfig(DriverError):
    pass


class UnknownPoint(DriverError):
    pass


class EncodeError(DriverError):
    pass


class PayloadError(DriverError):
    pass


class CommunicationError(DriverError):
    pass


class ConnectError(CommunicationError):
    pass


class DeviceTimeout(CommunicationError):
    pass


class ProtocolError(CommunicationError):
    pass


class GatewayNoResponse(CommunicationError):
    def __init__(
        self, message: str, *, code: int, device_id: str = "", address: int | None = None
    ) -> None:
        super().__init__(message, device_id=device_id, address=address)
        self.code = code  # 0x0A (no path to the device) or 0x0B (the device did not answer)


class DeviceRefused(DriverError):
    def __init__(
        self, message: str, *, code: int, device_id: str = "", address: int | None = None
    ) -> None:
        super().__init__(message, device_id=device_id, address=address)
        self.code = code


class IllegalFunction(DeviceRefused):
    pass


class IllegalAddress(DeviceRefused):
    pass


class IllegalValue(DeviceRefused):
    pass


class DeviceFailure(DeviceRefused):
    pass


class DeviceBusy(DeviceRefused):
    pass


_REFUSALS: dict[int, type[DeviceRefused]] = {
    0x01: IllegalFunction,
    0x02: IllegalAddress,
    0x03: IllegalValue,
    0x04: DeviceFailure,
    0x06: DeviceBusy,
}


def refusal(code: int, *, device_id: str, address: int) -> DriverError:
    """The error for a Modbus exception response with ``code``."""
    if code in (0x0A, 0x0B):
        return GatewayNoResponse(f"gateway reports exception {code:#04x}", code=code,
                                 device_id=device_id, address=address)  # fmt: skip
    cls = _REFUSALS.get(code, DeviceRefused)
    return cls(f"device refused with exception {code:#04x}", code=code, device_id=device_id,
               address=address)  # fmt: skip


def check_response(response: Any, *, device_id: str, address: int) -> None:
    """Raise the matching :class:`DeviceRefused` if ``response`` is an exception response."""
    if response.isError():
        raise refusal(int(getattr(response, "exception_code", 0)), device_id=device_id,
                      address=address)  # fmt: skip


@contextmanager
def modbus_errors(device_id: str, address: int | None = None) -> Iterator[None]:
    """Convert pymodbus and socket exceptions raised inside the block into ours."""
    try:
        yield
    except TimeoutError as exc:
        raise DeviceTimeout("no answer in time", device_id=device_id, address=address) from exc
    except ConnectionException as exc:
        raise ConnectError(str(exc), device_id=device_id, address=address) from exc
    except ModbusIOException as exc:
        # pymodbus reports "no response received" as an I/O error, not a timeout
        if "No response" in str(exc):
            raise DeviceTimeout("no answer in time", device_id=device_id, address=address) from exc
        raise ProtocolError(str(exc), device_id=device_id, address=address) from exc
    except ModbusException as exc:
        raise ProtocolError(str(exc), device_id=device_id, address=address) from exc
    except OSError as exc:
        raise ConnectError(str(exc), device_id=device_id, address=address) from exc
