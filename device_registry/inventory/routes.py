"""The installer-facing endpoints: register, change and retire gateways and devices, import
devices from CSV, send commands, manage API tokens, read the audit log; and their wiring
(``installer_ctx``: the registry, its downlink session and the broker access, on app start-up).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel
from sqlalchemy import select

from device_registry.db.store import RegistryStore
from device_registry.db.tables import AuditEntry
from device_registry.errors import BrokerUnavailable, Invalid
from device_registry.http import auth
from device_registry.http.api import STORE, BadQuery, _int, _query
from device_registry.http.auth import PRINCIPAL, Role, requires
from device_registry.inventory import csvimport
from device_registry.inventory.commands import CommandRequest, Commands
from device_registry.inventory.configgen import Profiles, Uplink
from device_registry.inventory.downlink import BrokerSettings, Downlink
from device_registry.inventory.provisioning import DynsecAccess, NoBrokerAccess
from device_registry.inventory.registry import Issued, Registry
from device_registry.inventory.requests import (
    DeviceCreate,
    DevicePatch,
    GatewayCreate,
    GatewayPatch,
)
from gridwatch.ground.gatewayconf import default_profiles_dir
from gridwatch.ground.profiles import load_profiles

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)
_STOP_S = 3.0
_ALL = (Role.INSTALLER, Role.MAINTENANCE, Role.OPERATOR, Role.PLATFORM)


@dataclass(frozen=True)
class InstallerSettings:
    uplink: Uplink = field(default_factory=Uplink)
    """What generated configs tell gateways about the broker."""
    broker: BrokerSettings | None = None
    """The registry's own broker session (configs, commands); None: none (nothing is pushed)."""
    dynsec: bool = False
    """Whether that session may drive mosquitto's dynamic-security plugin."""
    profiles_dir: Path | None = None
    announce: Callable[[str], None] = print
    """Where a freshly generated admin token is shown, once."""


@dataclass
class Installers:
    registry: Registry
    commands: Commands
    downlink: Downlink | None


INSTALLERS = web.AppKey("installers", Installers)


def _now() -> int:
    return time.time_ns() // 1_000_000


def installer_ctx(settings: InstallerSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup context (after the store's): admin bootstrap, registry, downlink task."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        store = app[STORE]
        token = await auth.bootstrap_admin(store)
        if token is not None:
            settings.announce(
                f"gridwatch registry: admin API token (shown once, keep it): {token}\n"
                f"  or start with {auth.ADMIN_TOKEN_ENV} set to choose your own"
            )
        profiles = _profiles(settings.profiles_dir)
        downlink: Downlink | None = None
        pushed: Callable[[str], None] = lambda _gw: None  # noqa: E731 - nothing to push to
        registry = Registry(
            store, NoBrokerAccess(), settings.uplink, profiles, lambda gw: pushed(gw)
        )
        if settings.broker is not None:
            downlink = Downlink(settings.broker, _config_source(registry), registry.pending_pushes,
                                registry.record_ack, lambda r: commands.record(r), _now)  # fmt: skip
            pushed = downlink.push
            if settings.dynsec:
                registry.broker = DynsecAccess(downlink, settings.broker.prefix)
        commands = Commands(store, profiles, _sender(downlink))
        app[INSTALLERS] = Installers(registry, commands, downlink)
        tasks: list[asyncio.Task[None]] = []
        if downlink is not None:
            tasks.append(asyncio.create_task(downlink.run(), name="registry-downlink"))
            if settings.dynsec and settings.broker and settings.broker.username:
                downlink.on_connect = _central_role(downlink, registry, settings.broker.username)
        yield
        for t in tasks:
            t.cancel()
        if tasks:  # a broker that does not answer our DISCONNECT must not hold up the shutdown
            _, stuck = await asyncio.wait(tasks, timeout=_STOP_S)
            for t in stuck:
                logger.warning("registry: %s did not stop within %.0fs", t.get_name(), _STOP_S)

    return ctx


def _profiles(folder: Path | None) -> Callable[[], Profiles]:
    return functools.cache(lambda: load_profiles(folder or default_profiles_dir()))


def _sender(downlink: Downlink | None) -> Any:
    async def send(gateway: str, cmd: Any) -> None:
        if downlink is None:
            raise BrokerUnavailable("this registry has no broker session (--mqtt-host)")
        await downlink.command(gateway, cmd)

    return send


def _config_source(registry: Registry) -> Any:
    async def config_of(gateway: str) -> tuple[int, dict[str, Any] | None]:
        doc = await registry.config_document(gateway)
        return (int(doc["version"]) if doc else 0), doc

    return config_of


def _central_role(
    downlink: Downlink, registry: Registry, username: str
) -> Callable[[], Awaitable[None]]:
    """On every connect, before the session serves requests: the registry's own user may use
    the whole gateway tree (granting it drops the session once; the next connect finds it)."""

    async def setup() -> None:
        try:
            assert isinstance(registry.broker, DynsecAccess)
            await registry.broker.ensure_central(username)
        except BrokerUnavailable as exc:
            logger.error("broker: %s", exc)

    return setup


# ---- helpers ---------------------------------------------------------------------------------


async def _body(request: web.Request, model: type[M]) -> M:
    try:
        data = await request.json()
    except ValueError as exc:
        raise BadQuery(f"the body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Invalid([("(body)", f"expected a JSON object, got {type(data).__name__}")])
    return model.model_validate(data)  # ValidationError -> 422 in json_errors


def _ok(body: Any, status: int = 200) -> web.Response:
    if isinstance(body, BaseModel):
        body = body.model_dump(mode="json")
    return web.json_response(body, status=status)


def _inst(request: web.Request) -> Installers:
    return request.app[INSTALLERS]


def _retired_flag(value: str | None) -> bool | None:
    table = {None: False, "false": False, "true": True, "any": None}
    if value not in table:
        raise BadQuery(f"retired must be true, false or any, got {value!r}")
    return table[value]


# ---- gateways --------------------------------------------------------------------------------


@requires(*_ALL)
async def list_gateways(request: web.Request) -> web.Response:
    q = _query(request, {"district", "online", "retired", "limit", "offset"})
    online = {"true": True, "false": False, None: None}.get(q.get("online"), "bad")
    if online == "bad":
        raise BadQuery(f"online must be true or false, got {q.get('online')!r}")
    found = await _inst(request).registry.gateways(
        district=q.get("district"), online=online if isinstance(online, bool) else None,
        retired=_retired_flag(q.get("retired")) if "retired" in q else None,
        limit=_int(q.get("limit"), "limit", 1000, 1, 10000),
        offset=_int(q.get("offset"), "offset", 0, 0, 10**9),
    )  # fmt: skip
    return _ok([g.model_dump(mode="json") for g in found])


@requires(Role.INSTALLER)
async def create_gateway(request: web.Request) -> web.Response:
    req = await _body(request, GatewayCreate)
    issued = await _inst(request).registry.add_gateway(req, request[PRINCIPAL])
    return _ok(_with_password(issued), 201)


@requires(Role.INSTALLER)
async def rotate_credentials(request: web.Request) -> web.Response:
    issued = await _inst(request).registry.rotate_credentials(
        request.match_info["id"], request[PRINCIPAL]
    )
    return _ok(_with_password(issued))


def _with_password(issued: Issued) -> dict[str, Any]:
    body = issued.gateway.model_dump(mode="json")
    body["mqtt"] = {"username": issued.gateway.id, "password": issued.password,
                    "note": "the password is shown this once; the registry keeps no copy"}  # fmt: skip
    return body


@requires(*_ALL)
async def get_gateway(request: web.Request) -> web.Response:
    _query(request, set())
    return _ok(await _inst(request).registry.gateway(request.match_info["id"]))


@requires(Role.INSTALLER)
async def patch_gateway(request: web.Request) -> web.Response:
    req = await _body(request, GatewayPatch)
    gw = await _inst(request).registry.update_gateway(
        request.match_info["id"], req, request[PRINCIPAL]
    )
    return _ok(gw)


@requires(Role.INSTALLER)
async def retire_gateway(request: web.Request) -> web.Response:
    gw = await _inst(request).registry.retire_gateway(request.match_info["id"], request[PRINCIPAL])
    return _ok(gw)


@requires(Role.INSTALLER, Role.MAINTENANCE)
async def gateway_config(request: web.Request) -> web.Response:
    doc = await _inst(request).registry.config_document(request.match_info["id"])
    if doc is None:
        raise web.HTTPGone(reason="the gateway is retired")
    return _ok(doc)


# ---- devices ---------------------------------------------------------------------------------


async def _device(request: web.Request, key: str, status: int = 200) -> web.Response:
    return _ok(await request.app[STORE].device(key), status)


@requires(Role.INSTALLER)
async def create_device(request: web.Request) -> web.Response:
    req = await _body(request, DeviceCreate)
    key = await _inst(request).registry.add_device(req, request[PRINCIPAL])
    return await _device(request, key, 201)


@requires(Role.INSTALLER, Role.MAINTENANCE)
async def patch_device(request: web.Request) -> web.Response:
    req = await _body(request, DevicePatch)
    key = await _inst(request).registry.update_device(
        request.match_info["id"], req, request[PRINCIPAL]
    )
    return await _device(request, key)


@requires(Role.INSTALLER)
async def retire_device(request: web.Request) -> web.Response:
    key = await _inst(request).registry.retire_device(request.match_info["id"], request[PRINCIPAL])
    return await _device(request, key)


@requires(Role.INSTALLER)
async def import_devices(request: web.Request) -> web.Response:
    if request.content_type not in ("text/csv", "text/plain"):
        raise web.HTTPUnsupportedMediaType(reason="send the CSV as text/csv")
    text = await _csv_text(request)
    try:
        good, bad = await asyncio.to_thread(csvimport.parse, text)  # CPU-bound for a big file
    except csvimport.CsvRejected as exc:
        raise BadQuery(str(exc)) from None
    registry = _inst(request).registry
    with _running_import(request):
        plan = await registry.plan_import(good)
        bad = sorted(bad + plan.refused, key=lambda r: r.line)
        if bad:
            return _ok({"error": "import rejected", "imported": 0,
                        "detail": f"{len(bad)} of {len(good) + len(bad)} rows refused; nothing imported",
                        "rejected": [r.as_dict() for r in bad]}, 422)  # fmt: skip
        await registry.import_devices(plan, request[PRINCIPAL])
    return _ok({"imported": len(good), "devices": [f"{d.gateway}:{d.id}" for _, d in good]})


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
        raise BadQuery("the CSV must be UTF-8") from None


# ---- commands --------------------------------------------------------------------------------


@requires(Role.OPERATOR)
async def send_command(request: web.Request) -> web.Response:
    req = await _body(request, CommandRequest)
    view = await _inst(request).commands.request(request.match_info["id"], req, request[PRINCIPAL])
    return _ok(view, 202)


@requires(Role.OPERATOR, Role.MAINTENANCE, Role.INSTALLER)
async def get_command(request: web.Request) -> web.Response:
    return _ok(await _inst(request).commands.get(request.match_info["id"]))


@requires(*_ALL)
async def list_profiles(request: web.Request) -> web.Response:
    profiles = _inst(request).registry.profiles()
    return _ok([{"id": p.id, "protocol": p.protocol, "points": sorted(p.points)}
                for p in sorted(profiles.values(), key=lambda p: p.id)])  # fmt: skip


# ---- tokens and audit ------------------------------------------------------------------------


@requires(Role.ADMIN)
async def create_token(request: web.Request) -> web.Response:
    req = await _body(request, auth.TokenRequest)
    return _ok(await auth.issue(request.app[STORE], req, request[PRINCIPAL]), 201)


@requires(Role.ADMIN)
async def list_tokens(request: web.Request) -> web.Response:
    return _ok([t.model_dump(mode="json") for t in await auth.tokens(request.app[STORE])])


@requires(Role.ADMIN)
async def revoke_token(request: web.Request) -> web.Response:
    token_id = _int(request.match_info["id"], "token id", 0, 0, 2**62)
    return _ok(await auth.revoke(request.app[STORE], token_id, request[PRINCIPAL]))


@requires(Role.ADMIN)
async def audit_log(request: web.Request) -> web.Response:
    q = _query(request, {"target", "limit"})
    limit = _int(q.get("limit"), "limit", 100, 1, 10000)
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)
    if "target" in q:
        stmt = stmt.where(AuditEntry.target == q["target"])
    store: RegistryStore = request.app[STORE]
    async with store.transaction() as s:
        rows = list(await s.scalars(stmt))
    return _ok([{"id": r.id, "ts": r.ts, "actor": r.actor, "role": r.role, "action": r.action,
                 "target": r.target, "detail": r.detail} for r in rows])  # fmt: skip


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/gateways", list_gateways),
        web.post("/api/v1/gateways", create_gateway),
        web.get("/api/v1/gateways/{id}", get_gateway),
        web.patch("/api/v1/gateways/{id}", patch_gateway),
        web.post("/api/v1/gateways/{id}/retire", retire_gateway),
        web.post("/api/v1/gateways/{id}/credentials", rotate_credentials),
        web.get("/api/v1/gateways/{id}/config", gateway_config),
        web.post("/api/v1/devices", create_device),
        web.post("/api/v1/devices/import", import_devices),
        web.patch("/api/v1/devices/{id}", patch_device),
        web.post("/api/v1/devices/{id}/retire", retire_device),
        web.post("/api/v1/devices/{id}/commands", send_command),
        web.get("/api/v1/commands/{id}", get_command),
        web.get("/api/v1/profiles", list_profiles),
        web.post("/api/v1/tokens", create_token),
        web.get("/api/v1/tokens", list_tokens),
        web.delete("/api/v1/tokens/{id}", revoke_token),
        web.get("/api/v1/audit", audit_log),
    ]
