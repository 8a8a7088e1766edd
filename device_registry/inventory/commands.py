"""Commands to devices: checked against the device's profile, sent down, their results kept.

A command is recorded before it is published (state ``sent``), so its result always finds it;
a command the broker did not take is recorded as ``failed`` with the reason.
"""

from __future__ import annotations

import logging
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
from gridwatch.ground.profiles import ModbusProfile

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


def check_point(profile: ModbusProfile | None, point: str) -> None:
    if profile is None:
        raise Invalid([("point", "the device's profile takes no commands")])
    found = profile.points.get(point)
    if found is None:
        raise Invalid([("point", f"no point {point!r} in profile {profile.id!r}; "
                                 f"writable: {sorted(p for p, v in profile.points.items() if v.writable)}")])  # fmt: skip
    if not found.writable:
        raise Invalid([("point", f"point {point!r} of profile {profile.id!r} is not writable")])


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
            check_point(prof if isinstance(prof, ModbusProfile) else None, req.point)
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
