"""The inventory's endpoints: gateways and devices (register, change, retire, list), the CSV
import, commands and profiles. Thin: parse (``routing``), call the registry, return a view."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from device_registry.db.store import DeviceFilter
from device_registry.errors import Invalid, NotFound
from device_registry.http import paging
from device_registry.http.auth import PRINCIPAL, Role, roles
from device_registry.http.routing import Route, json_reply, route
from device_registry.http.state import STORE
from device_registry.inventory import csvimport
from device_registry.inventory.commands import CommandRequest, CommandView
from device_registry.inventory.registry import Issued
from device_registry.inventory.requests import (
    BusPatch,
    DeviceCreate,
    DevicePatch,
    DeviceQuery,
    GatewayCreate,
    GatewayPatch,
    GatewayQuery,
    retired_flag,
)
from device_registry.inventory.views import DeviceView, GatewayView, IssuedGateway, MqttAccount
from device_registry.inventory.wiring import INSTALLERS, Installers
from gridwatch.ground.profiles import shown_points

logger = logging.getLogger(__name__)

# every role may read the inventory
READERS = roles(Role.INSTALLER, Role.MAINTENANCE, Role.OPERATOR, Role.PLATFORM)
INSTALLER = roles(Role.INSTALLER)


def _inst(request: web.Request) -> Installers:
    return request.app[INSTALLERS]


# ---- gateways --------------------------------------------------------------------------------


@route("GET", "/api/v1/gateways", READERS, "Gateways with health, location and config state")
async def list_gateways(request: web.Request, query: GatewayQuery) -> list[GatewayView]:
    return await _inst(request).registry.gateways(
        district=query.district, online=query.online, retired=retired_flag(query.retired),
        limit=query.limit, offset=query.offset,
    )  # fmt: skip


@route("POST", "/api/v1/gateways", INSTALLER, "Register a gateway; its MQTT password is "
       "shown this once", status=201)  # fmt: skip
async def create_gateway(request: web.Request, body: GatewayCreate) -> IssuedGateway:
    issued = await _inst(request).registry.add_gateway(body, request[PRINCIPAL])
    return _with_password(issued)


@route("POST", "/api/v1/gateways/{id}/credentials", INSTALLER,
       "Issue the gateway a new MQTT password (shown this once)")  # fmt: skip
async def rotate_credentials(request: web.Request) -> IssuedGateway:
    issued = await _inst(request).registry.rotate_credentials(
        request.match_info["id"], request[PRINCIPAL]
    )
    return _with_password(issued)


def _with_password(issued: Issued) -> IssuedGateway:
    mqtt = MqttAccount(username=issued.username, password=issued.password,
                       note="the password is shown this once; the registry keeps no copy")  # fmt: skip
    return IssuedGateway(**issued.gateway.model_dump(), mqtt=mqtt)


@route("GET", "/api/v1/gateways/{id}", READERS, "One gateway")
async def get_gateway(request: web.Request) -> GatewayView:
    return await _inst(request).registry.gateway(request.match_info["id"])


@route("PATCH", "/api/v1/gateways/{id}", INSTALLER, "Change a gateway's name, site, buses or "
       "labels")  # fmt: skip
async def patch_gateway(request: web.Request, body: GatewayPatch) -> GatewayView:
    return await _inst(request).registry.update_gateway(
        request.match_info["id"], body, request[PRINCIPAL]
    )


@route("PATCH", "/api/v1/gateways/{id}/buses/{bus}", INSTALLER, "Change one field bus of a "
       "gateway (timeout, host, port, ...), or add it given its type")  # fmt: skip
async def patch_bus(request: web.Request, body: BusPatch) -> GatewayView:
    return await _inst(request).registry.update_bus(
        request.match_info["id"], request.match_info["bus"], body, request[PRINCIPAL]
    )


@route("POST", "/api/v1/gateways/{id}/retire", INSTALLER, "Retire a gateway and its devices")
async def retire_gateway(request: web.Request) -> GatewayView:
    return await _inst(request).registry.retire_gateway(
        request.match_info["id"], request[PRINCIPAL]
    )


@route("GET", "/api/v1/gateways/{id}/config", roles(Role.INSTALLER, Role.MAINTENANCE),
       "The gateway's generated config document")  # fmt: skip
async def gateway_config(request: web.Request) -> dict[str, Any]:
    doc = await _inst(request).registry.config_document(request.match_info["id"])
    if doc is None:
        raise web.HTTPGone(text="the gateway is retired")
    return doc


# ---- devices ---------------------------------------------------------------------------------


@route("GET", "/api/v1/devices", READERS, "Devices with status, last_seen and last values with "
       "quality, in id order, a page at a time", shows=list[DeviceView], headers=paging.HEADERS)  # fmt: skip
async def list_devices(request: web.Request, query: DeviceQuery) -> web.Response:
    f = DeviceFilter(gateway=query.gateway, district=query.district, street=query.street,
                     grid=query.grid, profile=query.profile, status=query.status,
                     retired=retired_flag(query.retired), q=query.q)  # fmt: skip
    start = paging.after(query.after, "devices", (str,))
    page = await request.app[STORE].device_page(
        f, limit=query.limit, offset=query.offset, after=start.key if start else None,
        total=start.total if start else None,
    )  # fmt: skip
    return paging.reply(request, "devices", page)


@route("GET", "/api/v1/devices/{id}", READERS, "One device, by 'gateway:device' or by a device "
       "id unique across gateways", shows=DeviceView)  # fmt: skip
async def get_device(request: web.Request) -> web.Response:
    return json_reply(await request.app[STORE].device_row(request.match_info["id"]))


@route("POST", "/api/v1/devices", INSTALLER, "Register a device on a registered gateway",
       status=201)  # fmt: skip
async def create_device(request: web.Request, body: DeviceCreate) -> DeviceView:
    key = await _inst(request).registry.add_device(body, request[PRINCIPAL])
    return await request.app[STORE].device(key)


@route("PATCH", "/api/v1/devices/{id}", roles(Role.INSTALLER, Role.MAINTENANCE),
       "Change a registered device")  # fmt: skip
async def patch_device(request: web.Request, body: DevicePatch) -> DeviceView:
    key = await _inst(request).registry.update_device(
        request.match_info["id"], body, request[PRINCIPAL]
    )
    return await request.app[STORE].device(key)


@route("POST", "/api/v1/devices/{id}/retire", INSTALLER, "Retire a device")
async def retire_device(request: web.Request) -> DeviceView:
    key = await _inst(request).registry.retire_device(request.match_info["id"], request[PRINCIPAL])
    return await request.app[STORE].device(key)


@route("POST", "/api/v1/devices/import", INSTALLER, "Register devices from a CSV file: all rows "
       "or none", body_media="text/csv")  # fmt: skip
async def import_devices(request: web.Request) -> dict[str, Any]:
    if request.content_type not in ("text/csv", "text/plain"):
        raise web.HTTPUnsupportedMediaType(text="send the CSV as text/csv")
    text = await _csv_text(request)
    try:
        parsed = await asyncio.to_thread(csvimport.parse, text)  # CPU-bound for a big file
    except csvimport.CsvRejected as exc:
        raise Invalid([("(file)", str(exc))], "the CSV file") from None
    registry = _inst(request).registry
    with _running_import(request):
        plan = await registry.plan_import(parsed.good, parsed.bad)
        # every problem of the file at once: malformed values and what the registry refuses
        bad = csvimport.merged(parsed.bad, plan.refused)
        if bad:
            found = [(f"line {r.line} ({r.device}).{f}", m) for r in bad for f, m in r.errors]
            raise Invalid(found, f"the CSV file ({len(bad)} of {parsed.total} rows refused; "
                          "nothing imported)")  # fmt: skip
        await registry.import_devices(plan, request[PRINCIPAL])
    return {"imported": len(parsed.good),
            "devices": [f"{d.gateway}:{d.id}" for _, d in parsed.good]}  # fmt: skip


IMPORTS = web.AppKey("imports", set[asyncio.Task[Any]])
"""The imports running now: a stop cancels those that do not finish in ``IMPORT_STOP_S``."""
IMPORT_STOP_S = 5.0
IMPORT_UNDO_S = 10.0
"""How long a stop waits for a cancelled import to take its rows back (about a second)."""


@contextlib.contextmanager
def _running_import(request: web.Request) -> Iterator[None]:
    task = asyncio.current_task()
    assert task is not None
    running = request.app[IMPORTS]
    running.add(task)
    try:
        yield
    finally:
        running.discard(task)


async def stop_imports(app: web.Application) -> None:
    """On shutdown, before the store closes: imports get ``IMPORT_STOP_S`` to finish, then are
    cancelled, which undoes them (aiohttp itself would let them run on past the shutdown)."""
    running = app[IMPORTS].copy()
    if not running:
        return
    _, late = await asyncio.wait(running, timeout=IMPORT_STOP_S)
    for task in late:
        task.cancel()
    if late:
        logger.warning("registry: stopping: %d CSV import(s) cancelled and undone", len(late))
        _, stuck = await asyncio.wait(late, timeout=IMPORT_UNDO_S)
        if stuck:
            logger.error("registry: stopping: %d CSV import(s) not undone within %.0f s; their "
                         "devices stay unregistered until the file is imported again",
                         len(stuck), IMPORT_UNDO_S)  # fmt: skip


_CSV_READ_S = 120.0  # 16 MiB at ~140 KB/s: slower than that is a stuck or hostile client


async def _csv_text(request: web.Request) -> str:
    """The body, up to the import's own limit (``csvimport.MAX_BYTES``), not the API's 1 MiB."""
    limit = csvimport.MAX_BYTES
    too_big = web.HTTPRequestEntityTooLarge(
        max_size=limit, actual_size=request.content_length or limit + 1,
        reason=f"the CSV is larger than {limit // 2**20} MiB: split the file",
    )  # fmt: skip
    if (request.content_length or 0) > limit:
        raise too_big
    data = bytearray()
    try:
        async with asyncio.timeout(_CSV_READ_S):
            async for part in request.content.iter_any():
                data += part
                if len(data) > limit:
                    raise too_big
    except TimeoutError:
        raise web.HTTPRequestTimeout(
            reason=f"the CSV did not arrive within {_CSV_READ_S:.0f} s"
        ) from None
    try:
        return data.decode(request.charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        raise Invalid([("(body)", "the CSV must be UTF-8")], "the CSV file") from None


# ---- commands and profiles -------------------------------------------------------------------


@route("POST", "/api/v1/devices/{id}/commands", roles(Role.OPERATOR),
       "Write a point of a device (a remote command)", status=202)  # fmt: skip
async def send_command(request: web.Request, body: CommandRequest) -> CommandView:
    return await _inst(request).commands.request(request.match_info["id"], body, request[PRINCIPAL])


@route("GET", "/api/v1/commands/{id}", roles(Role.OPERATOR, Role.MAINTENANCE, Role.INSTALLER),
       "A command and its result")  # fmt: skip
async def get_command(request: web.Request) -> CommandView:
    return await _inst(request).commands.get(request.match_info["id"])


@route("GET", "/api/v1/profiles", READERS, "Device profiles, their points, and how each point "
       "is shown (unit, decimals, on/off, rule limits)")  # fmt: skip
async def list_profiles(request: web.Request) -> list[dict[str, Any]]:
    profiles = _inst(request).registry.profiles()
    return [{"id": p.id, "protocol": p.protocol, "points": sorted(p.points),
             "shown": shown_points(p)}
            for p in sorted(profiles.values(), key=lambda p: p.id)]  # fmt: skip


@route("GET", "/api/v1/profiles/{id}", READERS, "One device profile, every point in full")
async def get_profile(request: web.Request) -> dict[str, Any]:
    name = request.match_info["id"]
    profile = _inst(request).registry.profiles().get(name)
    if profile is None:
        raise NotFound("profile", name)
    found: dict[str, Any] = profile.model_dump(mode="json")
    return found


ROUTES: tuple[Route, ...] = (
    list_gateways, create_gateway, get_gateway, patch_gateway, patch_bus, retire_gateway,
    rotate_credentials, gateway_config,
    # fixed paths before /devices/{id}: aiohttp tries resources in the order they were added
    list_devices, create_device, import_devices, get_device, patch_device, retire_device,
    send_command, get_command, list_profiles, get_profile,
)  # fmt: skip
