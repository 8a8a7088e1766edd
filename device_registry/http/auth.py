"""Who may call what: API tokens, roles, and the middleware that checks them on every request.

A token is 32 random bytes (URL-safe text) handed out once; the registry keeps only its SHA-256,
so a copy of the database lets nobody in. A request carries it as ``Authorization: Bearer <token>``
or, from the browser dashboard, as the cookie ``gw_token``. The dashboard logs in with
``POST /api/v1/session``, which sets that cookie ``HttpOnly; SameSite=Strict`` (no script can read
it); a write that carries the cookie must come from a page of this server, in JSON
(``cross_site``), so that another page cannot forge it. Bearer requests are machines': unchecked.

Every endpoint declares its roles where its room declares the route (``routing.route``; an empty
set is public); the middleware refuses a request to an endpoint that declared nothing (deny by
default). ``admin`` may call everything.
Refusals are raised as ``Unauthorized``/``Forbidden`` and answered by ``problems.py``.

Bootstrap: when the store opens without any admin token, ``bootstrap_admin`` makes one from
``GRIDWATCH_ADMIN_TOKEN`` if that is set, else a random one that the caller prints once.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import secrets
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

from aiohttp import hdrs, web
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from device_registry.db.store import RegistryStore
from device_registry.db.tables import ApiToken, AuditEntry
from device_registry.errors import Forbidden, NotFound, Unauthorized
from gridwatch.ground.i18n import _

logger = logging.getLogger(__name__)

ADMIN_TOKEN_ENV = "GRIDWATCH_ADMIN_TOKEN"
COOKIE = "gw_token"
ROLES_ATTR = "__gridwatch_roles__"


class Role(enum.StrEnum):
    INSTALLER = "installer"
    MAINTENANCE = "maintenance"
    OPERATOR = "operator"
    PLATFORM = "platform"
    ADMIN = "admin"


PUBLIC: frozenset[Role] = frozenset()
"""The roles of a ``@public`` endpoint: none needed, no token read."""


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role


PRINCIPAL = web.RequestKey("principal", Principal)
AUTH_STORE: web.AppKey[Callable[[], RegistryStore]] = web.AppKey("auth_store")
"""How the middleware reaches the store (it is opened after the app is built)."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def roles(*named: Role) -> frozenset[Role]:
    """The roles a route names (``routing.route`` adds ``admin``)."""
    return frozenset(named)


def public(handler: Handler) -> Handler:
    """An endpoint anyone may call without a token (``/health``, ``/metrics``)."""
    setattr(handler, ROLES_ATTR, PUBLIC)
    return handler


def roles_of(handler: Any) -> frozenset[Role] | None:
    """The declared roles; None when the endpoint declared nothing (it is then refused)."""
    found: frozenset[Role] | None = getattr(handler, ROLES_ATTR, None)
    return found


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """32 random bytes, URL-safe; never starting with '-', which a shell user's
    ``--token $T`` would have taken for an option (one token in 64 did)."""
    while (token := secrets.token_urlsafe(32)).startswith("-"):
        pass
    return token


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _presented(request: web.Request) -> str | None:
    return _bearer(request) or request.cookies.get(COOKIE) or None


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    match = request.match_info
    if match.http_exception is not None:  # no such route: 404/405 as usual
        return await handler(request)
    allowed = roles_of(match.handler)
    if allowed == PUBLIC:
        return await handler(request)
    token = _presented(request)
    if token is None:
        raise Unauthorized(_("send 'Authorization: Bearer <token>'"))
    if _bearer(request) is None and (why := forged(request)) is not None:
        raise Forbidden(why)
    principal = await lookup(request.app[AUTH_STORE](), token)
    if principal is None:
        raise Unauthorized(_("unknown or revoked token"))
    if allowed is None or principal.role not in allowed:
        names = sorted(r.value for r in allowed or ())
        where = match.route.resource.canonical if match.route.resource else request.path[:200]
        raise Forbidden(_("role {role} may not {method} {where}; allowed: {names}").format(
            role=principal.role, method=request.method, where=where, names=names))  # fmt: skip
    request[PRINCIPAL] = principal
    return await handler(request)


# ---- tokens in the store -------------------------------------------------------------------


class TokenRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128, description="Who or what uses it.")
    role: Role


class TokenView(BaseModel):
    id: int
    name: str
    role: Role
    created_at: int
    created_by: str
    revoked_at: int | None = None


class IssuedToken(TokenView):
    token: str = Field(description="The token itself: shown this once, kept only hashed.")


def _now() -> int:
    return time.time_ns() // 1_000_000


_CACHE_S = 2.0
"""How long a token's check is reused: one query less per request. A revocation through this
process applies at once (the cache is cleared); through another registry process, within this."""
_cache: dict[str, tuple[float, Principal | None]] = {}


async def lookup(store: RegistryStore, token: str) -> Principal | None:
    digest = hash_token(token)
    now = time.monotonic()
    hit = _cache.get(digest)
    if hit is not None and now - hit[0] < _CACHE_S:
        return hit[1]
    async with store.transaction() as s:
        row = await s.scalar(select(ApiToken).where(ApiToken.sha256 == digest))
    found = (
        None if row is None or row.revoked_at is not None else Principal(row.name, Role(row.role))
    )
    if len(_cache) > 10_000:  # unknown tokens must not grow it without bound
        _cache.clear()
    _cache[digest] = (now, found)
    return found


def token_key(request: web.Request) -> str:
    """The digest of the token this request came with: what ``revoked_among`` asks about."""
    return hash_token(_presented(request) or "")


async def revoked_among(store: RegistryStore, keys: Collection[str]) -> set[str]:
    """Which of these token digests are revoked (or unknown), in one query and past the cache:
    long-lived responses (the alert streams) ask this every few seconds, all at once."""
    wanted = list(keys)
    live: set[str] = set()
    async with store.transaction() as s:
        for i in range(0, len(wanted), 500):  # a bounded number of parameters per statement
            chunk = wanted[i : i + 500]
            live.update(await s.scalars(
                select(ApiToken.sha256).where(ApiToken.sha256.in_(chunk),
                                              ApiToken.revoked_at.is_(None))
            ))  # fmt: skip
    return set(wanted) - live


def _view(row: ApiToken) -> TokenView:
    return TokenView(id=row.id, name=row.name, role=Role(row.role), created_at=row.created_at,
                     created_by=row.created_by, revoked_at=row.revoked_at)  # fmt: skip


async def issue(
    store: RegistryStore, req: TokenRequest, by: Principal, token: str | None = None
) -> IssuedToken:
    token = token or new_token()
    now = _now()
    row = ApiToken(name=req.name, role=req.role.value, sha256=hash_token(token), created_at=now,
                   created_by=by.name)  # fmt: skip
    async with store.transaction() as s:
        s.add(row)
        await s.flush()
        s.add(
            audit_row(by, "token.create", f"token:{row.id}", {"name": req.name, "role": req.role})
        )
    return IssuedToken(**_view(row).model_dump(), token=token)


async def tokens(store: RegistryStore) -> list[TokenView]:
    async with store.transaction() as s:
        return [_view(r) for r in await s.scalars(select(ApiToken).order_by(ApiToken.id))]


async def revoke(store: RegistryStore, token_id: int, by: Principal) -> TokenView:
    async with store.transaction() as s:
        row = await s.get(ApiToken, token_id)
        if row is None:
            raise NotFound("token", str(token_id))
        _cache.clear()
        if row.revoked_at is None:
            row.revoked_at = _now()
            s.add(audit_row(by, "token.revoke", f"token:{row.id}", {"name": row.name}))
        return _view(row)


SYSTEM = Principal("system", Role.ADMIN)


async def bootstrap_admin(store: RegistryStore) -> str | None:
    """Make sure an admin can log in. Returns a freshly generated admin token (to be shown once)
    when there was none and ``GRIDWATCH_ADMIN_TOKEN`` is not set; None otherwise."""
    from_env = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    async with store.transaction() as s:
        if from_env:
            known = await s.scalar(
                select(ApiToken.id).where(ApiToken.sha256 == hash_token(from_env))
            )
        else:
            known = await s.scalar(
                select(ApiToken.id).where(
                    ApiToken.role == Role.ADMIN.value, ApiToken.revoked_at.is_(None)
                )
            )
    if known is not None:
        return None
    name = "admin (from environment)" if from_env else "admin (bootstrap)"
    issued = await issue(store, TokenRequest(name=name, role=Role.ADMIN), SYSTEM, from_env or None)
    logger.info("created the %s token (id %d)", name, issued.id)
    return None if from_env else issued.token


def audit_row(by: Principal, action: str, target: str, detail: dict[str, Any] | None) -> AuditEntry:
    return AuditEntry(ts=_now(), actor=by.name, role=by.role.value, action=action, target=target,
                      detail=detail)  # fmt: skip


# ---- browser sessions: the HttpOnly cookie, and refusing writes forged by other pages -------

UNSAFE_METHODS = frozenset({hdrs.METH_POST, hdrs.METH_PUT, hdrs.METH_PATCH, hdrs.METH_DELETE})
SESSION_PATH = "/api/v1/session"


def cross_site(
    method: str, host: str, origin: str | None, referer: str | None, content_type: str,
    has_body: bool,
) -> str | None:  # fmt: skip
    """Why a write that carries the session cookie looks forged by another page; None if not.

    A browser attaches the cookie whichever page sends the request (``SameSite=Strict`` stops
    other *sites*, not another port or a sibling host of the same site), but on a write it names
    the sending page in ``Origin`` (``Referer`` in older browsers), and a page of another origin
    cannot send an ``application/json`` body without a CORS preflight, which we never grant.
    Only the host and port are compared, not the scheme: a proxy that ends TLS passes the
    browser's ``Host`` on while it speaks plain HTTP to us.
    """
    if method not in UNSAFE_METHODS:
        return None
    source = origin if origin is not None else referer
    if source is None:
        return f"a {method} with the session cookie must carry an Origin or Referer header"
    try:
        netloc = urllib.parse.urlsplit(source).netloc
    except ValueError:  # e.g. an unclosed IPv6 bracket
        netloc = ""
    if netloc.lower() != host.lower():
        return (f"a {method} with the session cookie from {source!r} is refused: only pages "
                f"served by {host} may write with it (machines send 'Authorization: Bearer')")  # fmt: skip
    if has_body and content_type != "application/json":
        got = content_type or "no Content-Type"
        return (
            f"a {method} with the session cookie must send its body as application/json, not {got}"
        )
    return None


def forged(request: web.Request) -> str | None:
    """``cross_site`` of this request."""
    typed = hdrs.CONTENT_TYPE in request.headers
    return cross_site(request.method, request.host, request.headers.get(hdrs.ORIGIN),
                      request.headers.get(hdrs.REFERER), request.content_type if typed else "",
                      request.body_exists)  # fmt: skip
