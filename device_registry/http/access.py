"""Access control's endpoints: API tokens, the audit log, and the browser's session.

They stay in ``http/`` beside ``auth.py`` rather than in a room: who may call what is a concern of
the HTTP layer across every room (the middleware that enforces it lives here), and the audit log
is written by every room's changes.

The browser's session: ``POST /api/v1/session`` checks a token and keeps it in the ``HttpOnly``
cookie, so the dashboard's scripts never see it; it and ``GET`` answer who that is and what the
role may call (``may``), so the page offers each role only what it may do; ``DELETE`` forgets it
(public, so that a revoked token's cookie can be cleared too). Writes with the cookie are checked against forgery by the
auth middleware (``auth.forged``); login and logout check it themselves, being public.
"""

from __future__ import annotations

from typing import Any

from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from device_registry.db.tables import AuditEntry
from device_registry.errors import Forbidden, Unauthorized
from device_registry.http import auth
from device_registry.http.auth import (
    AUTH_STORE,
    COOKIE,
    PRINCIPAL,
    PUBLIC,
    SESSION_PATH,
    IssuedToken,
    Principal,
    Role,
    TokenRequest,
    TokenView,
    forged,
    lookup,
    roles,
    roles_of,
)
from device_registry.http.routing import NumericId, Route, route
from device_registry.http.state import STORE
from gridwatch.ground.i18n import _

ADMIN = roles(Role.ADMIN)


class AuditQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: str | None = Field(default=None, max_length=300, description="e.g. 'gateway:gw-7'.")
    limit: int = Field(default=100, ge=1, le=10000, description="At most this many.")


@route("POST", "/api/v1/tokens", ADMIN, "Issue an API token (shown this once)", status=201)
async def create_token(request: web.Request, body: TokenRequest) -> IssuedToken:
    return await auth.issue(request.app[STORE], body, request[PRINCIPAL])


@route("GET", "/api/v1/tokens", ADMIN, "API tokens (never the tokens themselves)")
async def list_tokens(request: web.Request) -> list[TokenView]:
    return await auth.tokens(request.app[STORE])


@route("DELETE", "/api/v1/tokens/{id}", ADMIN, "Revoke an API token")
async def revoke_token(request: web.Request, path: NumericId) -> TokenView:
    return await auth.revoke(request.app[STORE], path.id, request[PRINCIPAL])


@route("GET", "/api/v1/audit", ADMIN, "Who changed what, newest first")
async def audit_log(request: web.Request, query: AuditQuery) -> list[dict[str, Any]]:
    stmt = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(query.limit)
    if query.target is not None:
        stmt = stmt.where(AuditEntry.target == query.target)
    async with request.app[STORE].transaction() as s:
        rows = list(await s.scalars(stmt))
    return [{"id": r.id, "ts": r.ts, "actor": r.actor, "role": r.role, "action": r.action,
             "target": r.target, "detail": r.detail} for r in rows]  # fmt: skip


class SessionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=512, description="An API token, as issued.")


class SessionView(BaseModel):
    name: str = Field(description="The token's name.")
    role: Role
    may: list[str] = Field(default_factory=list, description="Every call this role may make, as "
                           "'METHOD /path/{placeholder}': what a page shows it a button or a "
                           "live stream for.")  # fmt: skip


def may(app: web.Application, role: Role) -> list[str]:
    """The calls ``role`` may make on ``app``, read from the roles each route declares: the same
    declaration the middleware enforces, so a page never offers what would be refused."""
    found = set()
    for r in app.router.routes():
        allowed = roles_of(r.handler)
        if allowed and role in allowed and r.resource is not None and r.method != hdrs.METH_HEAD:
            found.add(f"{r.method} {r.resource.canonical}")
    return sorted(found)


def _session(request: web.Request, principal: Principal) -> web.Response:
    view = SessionView(name=principal.name, role=principal.role,
                       may=may(request.app, principal.role))  # fmt: skip
    return web.json_response(view.model_dump(mode="json"), headers={"Cache-Control": "no-store"})


@route("POST", SESSION_PATH, PUBLIC, "Log a browser in: the token is kept in an HttpOnly cookie",
       shows=SessionView)  # fmt: skip
async def log_in(request: web.Request, body: SessionRequest) -> web.Response:
    """``Secure`` only when this request came over TLS: on plain HTTP a browser would refuse to
    keep a ``Secure`` cookie (loopback aside), and the token crosses the wire in clear anyway."""
    if (why := forged(request)) is not None:  # a login forged by another page: refused too
        raise Forbidden(why)
    principal = await lookup(request.app[AUTH_STORE](), body.token)
    if principal is None:
        raise Unauthorized(_("unknown or revoked token"))
    resp = _session(request, principal)
    resp.set_cookie(COOKIE, body.token, path="/", httponly=True, samesite="Strict",
                    secure=request.secure or None)  # fmt: skip
    return resp


@route("GET", SESSION_PATH, roles(*Role), "Who this session (or bearer token) is",
       shows=SessionView)  # fmt: skip
async def whoami(request: web.Request) -> web.Response:
    return _session(request, request[PRINCIPAL])


@route("DELETE", SESSION_PATH, PUBLIC, "Log a browser out: forget the cookie")
async def log_out(request: web.Request) -> web.Response:
    if COOKIE in request.cookies and (why := forged(request)) is not None:
        raise Forbidden(why)
    resp = web.json_response({"logged_out": True}, headers={"Cache-Control": "no-store"})
    resp.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict",
                    secure=request.secure or None)  # fmt: skip
    return resp


ROUTES: tuple[Route, ...] = (
    create_token,
    list_tokens,
    revoke_token,
    audit_log,
    log_in,
    whoami,
    log_out,
)
