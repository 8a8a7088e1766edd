"""Access control's endpoints: API tokens and the audit log.

They stay in ``http/`` beside ``auth.py`` rather than in a room: who may call what is a concern of
the HTTP layer across every room (the middleware that enforces it lives here), and the audit log
is written by every room's changes.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from device_registry.db.tables import AuditEntry
from device_registry.http import auth
from device_registry.http.auth import PRINCIPAL, IssuedToken, Role, TokenRequest, TokenView, roles
from device_registry.http.routing import NumericId, Route, route
from device_registry.http.state import STORE

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


ROUTES: tuple[Route, ...] = (create_token, list_tokens, revoke_token, audit_log)
