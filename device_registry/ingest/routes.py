"""The ingest's endpoint: the messages the bridge refused (quarantine)."""

from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from device_registry.http.auth import Role, roles
from device_registry.http.routing import Route, route
from device_registry.http.state import STORE
from device_registry.ingest.views import QuarantineView


class QuarantineQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    limit: int = Field(default=100, ge=1, le=1000, description="At most this many.")


@route("GET", "/api/v1/quarantine", roles(Role.MAINTENANCE), "Messages the bridge refused, "
       "newest first")  # fmt: skip
async def list_quarantine(request: web.Request, query: QuarantineQuery) -> list[QuarantineView]:
    return await request.app[STORE].quarantine(query.limit)


ROUTES: tuple[Route, ...] = (list_quarantine,)
