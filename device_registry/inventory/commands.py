"""Commands to devices: checked against the device's profile, sent down, their results kept.

An actuator gets only a value its point accepts (``value_problem``, pure): a writable point of
the profile, a boolean for a coil or bit, a whole number that fits the register's integer type
(after the point's scale and offset, as the edge encodes it), a finite number that fits a float
register, and within the point's valid range if the profile gives one. A string point takes no
commands: the wire contract's command value carries numbers and booleans only.

A command is recorded before it is published (state ``sent``), so its result always finds it;
a command the broker did not take is recorded as ``failed`` with the reason.
"""

from __future__ import annotations

import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from device_registry.db.store import RegistryStore
from device_registry.db.tables import CommandRow, Device, Gateway
from device_registry.errors import BrokerUnavailable, Conflict, Invalid, NotFound
from device_registry.http.auth import Principal, audit_row
from device_registry.inventory.configgen import Profiles
from gridwatch.ground.contract import Command, CommandResult
from gridwatch.ground.profiles import ModbusPoint, ModbusProfile

logger = logging.getLogger(__name__)


class CommandRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    point: str = Field(min_length=1, max_length=128, description="A writable point of its profile.")
    value: bool | int | float = Field(description="What to write (engineering units).")
    ttl_s: int = Field(default=60, ge=1, le=86_400,
                       description="Seconds the command stays valid: a gateway that gets it later "
                       "(it was offline) does not run it, and it shows as 'expired'.")  # fmt: skip


class CommandView(BaseModel):
    id: str
    gateway: str
    device: str = Field(description="Registry id '<gateway>:<device>'.")
    point: str
    value: bool | int | float
    requested_by: str
    requested_at: int
    state: str = Field(description="sent | ok | failed | expired (sent, no answer by expires_at)")
    error: str = ""
    answered_at: int | None = None
    expires_at: int | None = None


def _now() -> int:
    return time.time_ns() // 1_000_000


def command_view(r: CommandRow, now: int) -> CommandView:
    state = r.state
    if state == "sent" and r.expires_at is not None and now > r.expires_at:
        state = "expired"  # no answer in time; the gateway will not run it any more
    return CommandView(id=r.id, gateway=r.gateway_id, device=r.device_id, point=r.point,
                       value=r.value, requested_by=r.requested_by, requested_at=r.requested_at,
                       state=state, error=r.error, answered_at=r.answered_at,
                       expires_at=r.expires_at)  # fmt: skip


INT_RANGES: dict[str, tuple[int, int]] = {
    "int16": (-(2**15), 2**15 - 1), "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1), "uint32": (0, 2**32 - 1),
    "int64": (-(2**63), 2**63 - 1), "uint64": (0, 2**64 - 1),
}  # fmt: skip
FLOAT_MAX = {"float32": 3.4028234663852886e38, "float64": 1.7976931348623157e308}

Value = bool | int | float


def check_point(profile: ModbusProfile | None, point: str, value: Value) -> None:
    """``Invalid`` unless ``point`` is a writable point of ``profile`` that accepts ``value``."""
    if profile is None:
        raise Invalid([("point", "the device's profile takes no commands")])
    found = profile.points.get(point)
    if found is None:
        raise Invalid([("point", f"no point {point!r} in profile {profile.id!r}; "
                                 f"writable: {sorted(p for p, v in profile.points.items() if v.writable)}")])  # fmt: skip
    if not found.writable:
        raise Invalid([("point", f"point {point!r} of profile {profile.id!r} is not writable")])
    accepts = value_problem(found, value)
    if accepts is not None:
        raise Invalid([("value", f"point {point!r} ({found.data_type}) accepts {accepts}; "
                                 f"got {_shown(value)}")])  # fmt: skip


def value_problem(p: ModbusPoint, value: Value) -> str | None:
    """None if the point accepts ``value``; else what it accepts, in words."""
    if p.data_type in ("bool", "bit"):
        return None if isinstance(value, bool) else "true or false"
    if p.data_type == "string":
        return "no commands (a text point)"
    low, high = _limits(p)
    if p.range is not None:  # the profile's valid range narrows what the type allows
        low = max(low, p.range.min) if p.range.min is not None else low
        high = min(high, p.range.max) if p.range.max is not None else high
    whole = p.data_type in INT_RANGES and p.scale == 1 and p.offset == 0
    kind = "whole numbers" if whole else "numbers"
    accepts = f"{kind} from {_shown(low)} to {_shown(high)}"
    if isinstance(value, bool) or (isinstance(value, float) and not math.isfinite(value)):
        return accepts  # NaN would be stored as null and sent as nothing the device can take
    if whole and isinstance(value, float) and not value.is_integer():
        return accepts
    return None if low <= value <= high else accepts


def _limits(p: ModbusPoint) -> tuple[float, float]:
    """The engineering values the point's register type can hold (``raw * scale + offset``)."""
    lo: float
    hi: float
    if p.data_type in INT_RANGES:
        lo, hi = INT_RANGES[p.data_type]
    else:
        hi = FLOAT_MAX[p.data_type]
        lo = -hi
    if p.scale == 1 and p.offset == 0:
        return lo, hi  # ints stay exact: 2**63 - 1 as a float would admit 2**63
    ends = sorted((lo * p.scale + p.offset, hi * p.scale + p.offset))
    return ends[0], ends[1]


def _shown(value: Value | float) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(value)


class Commands:
    def __init__(
        self, store: RegistryStore, profiles: Callable[[], Profiles],
        send: Callable[[str, Command], Awaitable[None]],
    ) -> None:  # fmt: skip
        self.store, self.profiles, self.send = store, profiles, send

    async def request(self, key: str, req: CommandRequest, by: Principal) -> CommandView:
        async with self.store.transaction() as s:
            column = Device.id if ":" in key else Device.name
            rows = list(await s.scalars(select(Device).where(column == key)))
            if len(rows) != 1 or rows[0].registered_at is None:
                raise NotFound("registered device", key)
            dev = rows[0]
            gw = await s.get(Gateway, dev.gateway_id)
            if dev.retired_at is not None or gw is None or gw.retired_at is not None:
                raise Conflict(f"device {dev.id!r} or its gateway is retired")
            prof = self.profiles().get(dev.profile or "")
            check_point(prof if isinstance(prof, ModbusProfile) else None, req.point, req.value)
            now = _now()
            row = CommandRow(id=uuid.uuid4().hex, gateway_id=dev.gateway_id, device_id=dev.id,
                             point=req.point, value=req.value, requested_by=by.name,
                             requested_at=now, state="sent", error="",
                             expires_at=now + req.ttl_s * 1000)  # fmt: skip
            s.add(row)
            s.add(audit_row(by, "device.command", f"device:{dev.id}", req.model_dump()))
        cmd = Command(id=row.id, device=dev.name, point=req.point, value=req.value,
                      ts=row.requested_at, expires_at=row.expires_at)  # fmt: skip
        try:
            await self.send(dev.gateway_id, cmd)
        except BrokerUnavailable as exc:
            await self._answer(row.id, "failed", f"not sent: {exc}")
            raise
        return command_view(row, _now())

    async def get(self, command_id: str) -> CommandView:
        async with self.store.transaction() as s:
            row = await s.get(CommandRow, command_id)
            if row is None:
                raise NotFound("command", command_id)
            return command_view(row, _now())

    async def record(self, result: CommandResult) -> None:
        async with self.store.transaction() as s:
            row = await s.get(CommandRow, result.id)
            if row is None or row.gateway_id != result.gateway:
                logger.warning("result of unknown command %s from %s", result.id, result.gateway)
                return
        state = "ok" if result.ok else "expired" if result.expired else "failed"
        await self._answer(result.id, state, result.error)

    async def _answer(self, command_id: str, state: str, error: str) -> None:
        async with self.store.transaction() as s:
            row = await s.get(CommandRow, command_id)
            if row is not None:
                row.state, row.error, row.answered_at = state, error, _now()
