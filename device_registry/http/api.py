"""The registry's REST API (aiohttp). Errors are JSON; bad input is a 4xx, never a 500."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from device_registry.db.store import RegistryStore
from device_registry.errors import (
    Ambiguous,
    BrokerUnavailable,
    Conflict,
    Invalid,
    NotFound,
    StoreRejected,
    StoreUnavailable,
)
from device_registry.http.auth import Role, public, requires
from device_registry.http.openapi import openapi_document
from device_registry.http.schemas import ErrorView, HealthView, Problem

logger = logging.getLogger(__name__)

STORE = web.AppKey("store", RegistryStore)
# name -> a function reporting one part of the hosting process (e.g. the bridge) for /health;
# a callable, so that the registry need not import what reports
HealthPart = Callable[[], dict[str, Any]]
HEALTH_PARTS = web.AppKey("health_parts", dict[str, HealthPart])

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def routes() -> list[web.RouteDef]:
    return [
        web.get("/health", health),
        web.get("/api/v1/openapi.json", openapi),
        # GET /api/v1/gateways (filters, locations, config state): registration_api
        web.get("/api/v1/devices", list_devices),
        web.get("/api/v1/devices/{id}", get_device),
        web.get("/api/v1/alerts", list_alerts),
        web.get("/api/v1/quarantine", list_quarantine),
    ]


def _json(body: BaseModel | Iterable[BaseModel], status: int = 200) -> web.Response:
    if isinstance(body, BaseModel):
        return web.json_response(body.model_dump(mode="json"), status=status)
    return web.json_response([b.model_dump(mode="json") for b in body], status=status)


def _error(status: int, error: str, detail: str = "") -> web.Response:
    return _json(ErrorView(error=error, detail=detail), status=status)


class BadQuery(Exception):
    """A query string the endpoint does not accept; becomes a 400."""


def _query(request: web.Request, allowed: set[str]) -> dict[str, str]:
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise BadQuery(f"unknown query parameter(s) {unknown}; allowed: {sorted(allowed)}")
    return {k: request.query[k] for k in allowed if k in request.query}


def _int(value: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise BadQuery(f"{name} must be an integer, got {value!r}") from None
    if not lo <= n <= hi:
        raise BadQuery(f"{name} must be within {lo}..{hi}, got {n}")
    return n


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BadQuery as exc:
        return _error(400, "bad request", str(exc))
    except NotFound as exc:
        return _error(404, "not found", str(exc))
    except Ambiguous as exc:
        return _error(409, "ambiguous", str(exc))
    except StoreUnavailable as exc:
        logger.error("store unavailable serving %s: %s", request.path, exc)
        return _error(503, "store unavailable", str(exc))
    except StoreRejected:
        # a statement the database refused is our bug (or a check we lack): log it whole, and
        # answer in JSON without the database's words
        logger.exception("store refused a statement serving %s %s", request.method, request.path)
        return _error(500, "internal error", "the registry could not do this; see its log")
    except ValidationError as exc:
        return _invalid([(".".join(str(x) for x in e["loc"]) or "(body)", e["msg"])
                         for e in exc.errors()])  # fmt: skip
    except Invalid as exc:
        return _invalid(exc.problems)
    except Conflict as exc:
        return _error(409, "conflict", str(exc))
    except BrokerUnavailable as exc:
        logger.error("broker unavailable serving %s: %s", request.path, exc)
        return _error(503, "broker unavailable", str(exc))
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, exc.reason, f"{request.method} {request.path}")


def _invalid(problems: list[tuple[str, str]]) -> web.Response:
    view = ErrorView(error="invalid", detail="; ".join(f"{f}: {m}" for f, m in problems),
                     problems=[Problem(field=f, message=m) for f, m in problems])  # fmt: skip
    return _json(view, status=422)


# every role may read the inventory; alerts are for those who act on them
_READERS = (Role.INSTALLER, Role.MAINTENANCE, Role.OPERATOR, Role.PLATFORM)


@public
async def health(request: web.Request) -> web.Response:
    store = request.app[STORE]
    parts = {name: report() for name, report in request.app[HEALTH_PARTS].items()}
    try:
        await store.ping()
    except StoreUnavailable as exc:
        return _json(HealthView(status="degraded", database=str(exc), parts=parts), status=503)
    return _json(HealthView(status="ok", database=store.dialect, parts=parts))


@public
async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


@requires(*_READERS)
async def list_devices(request: web.Request) -> web.Response:
    q = _query(request, {"gateway", "district", "grid", "profile", "status", "retired", "limit",
                         "offset"})  # fmt: skip
    retired = {"false": False, "true": True, "any": None}
    if q.get("retired", "false") not in retired:
        raise BadQuery(f"retired must be true, false or any, got {q['retired']!r}")
    return _json(
        await request.app[STORE].devices(
            q.get("gateway"), q.get("district"), grid=q.get("grid"), profile=q.get("profile"),
            status=q.get("status"), retired=retired[q.get("retired", "false")],
            limit=_int(q.get("limit"), "limit", 1000, 1, 10000),
            offset=_int(q.get("offset"), "offset", 0, 0, 10**9),
        )
    )  # fmt: skip


@requires(*_READERS)
async def get_device(request: web.Request) -> web.Response:
    _query(request, set())
    return _json(await request.app[STORE].device(request.match_info["id"]))


@requires(Role.OPERATOR, Role.MAINTENANCE, Role.PLATFORM)
async def list_alerts(request: web.Request) -> web.Response:
    q = _query(request, {"state", "limit"})
    state = q.get("state", "active")
    if state not in ("active", "all"):
        raise BadQuery(f"state must be 'active' or 'all', got {state!r}")
    limit = _int(q.get("limit"), "limit", 1000, 1, 10000)
    return _json(await request.app[STORE].alerts(active_only=state == "active", limit=limit))


@requires(Role.MAINTENANCE)
async def list_quarantine(request: web.Request) -> web.Response:
    q = _query(request, {"limit"})
    limit = _int(q.get("limit"), "limit", 100, 1, 1000)
    return _json(await request.app[STORE].quarantine(limit))
