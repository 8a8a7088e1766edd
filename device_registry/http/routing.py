"""How an endpoint is declared, and the one way its request is parsed and its answer written.

Each room's ``routes.py`` declares its endpoints with ``@route(method, path, roles, ...)``. The
handler's own signature says what it takes and returns::

    @route("GET", "/api/v1/devices", READERS, "Devices with their latest values")
    async def list_devices(request: web.Request, query: DeviceQuery) -> list[DeviceView]: ...

A parameter named ``query``, ``body`` or ``path`` is parsed from the query string, the JSON body or
the URL's ``{placeholders}`` by its pydantic model before the handler runs; the return annotation
is the response model. So one declaration is what is served (``add_routes``), what the auth
middleware enforces (the roles) and what the OpenAPI document says (``openapi.py``).

Parsing never echoes the input back: a failure is ``Invalid`` (422) with each field's path and
pydantic's message. Bodies are parsed by pydantic-core's JSON parser with ``NaN``/``Infinity``
refused; it also refuses lone UTF-16 surrogates and nesting deeper than its recursion limit,
which Python's ``json`` would pass on (and then crash on) further in.

A handler may instead return a ``web.Response`` it wrote itself (a page, a file, a stream) and
say with ``shows=`` what it carries. The lists do so (``paging.py``): their rows come from column
queries as plain dicts already in the view's shape, and validating 1,000 of them through pydantic
on every request cost more than the query; ``shows=list[DeviceView]`` keeps the document true
and ``tests/test_paging.py`` checks the rows against it.

Answers are written by ``json_reply``: non-finite floats become ``null`` (a reading stored as
NaN must not make the whole answer unreadable to ``JSON.parse``), and ``allow_nan=False`` makes
sure nothing else slips through.
"""

from __future__ import annotations

import inspect
import json
import math
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import pydantic_core
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from device_registry.errors import Invalid
from device_registry.http.auth import ROLES_ATTR, Role
from gridwatch.ground.i18n import N_, _, validation_message

Handler = Callable[..., Awaitable[Any]]

M = TypeVar("M", bound=BaseModel)
PARTS = ("path", "query", "body")
"""The parameters a handler may declare besides the request, in the order they are parsed."""


@dataclass(frozen=True)
class Route:
    """One endpoint, as declared by its room."""

    method: str
    path: str
    handler: Handler
    roles: frozenset[Role]
    """Who may call it; empty: public (no token read). ``admin`` is added to any non-empty set."""
    summary: str
    status: int = 200
    """The status of a successful answer."""
    media: str = "application/json"
    """What a successful answer is (a raw handler's, e.g. ``text/html``)."""
    body_media: str = "application/json"
    """How the body is sent (``text/csv`` for a raw body the handler reads itself)."""
    shows: Any = None
    """What a raw handler's answer carries, for the docs: the model of ``/health``'s JSON, the
    messages of the alert stream's events, the rows of a list written straight to JSON."""
    headers: tuple[tuple[str, str], ...] = ()
    """Headers a successful answer carries, for the docs: (name, what it says) (a list's
    ``Link`` and ``X-Total-Count``, ``paging.HEADERS``)."""

    def __post_init__(self) -> None:
        # a typo in a parameter's name would only show as a 500 on the first call: say it now
        where = f"route {self.method} {self.path} ({getattr(self.handler, '__name__', '?')})"
        params = list(inspect.signature(self.handler).parameters)[1:]
        unknown = [p for p in params if p not in PARTS]
        if unknown:
            raise TypeError(f"{where}: parameters {unknown} are none of {list(PARTS)}")
        hints = typing.get_type_hints(self.handler)
        if "return" not in hints:
            raise TypeError(f"{where}: annotate what it returns (its answer's model)")
        for part, model in self.models.items():
            if not (inspect.isclass(model) and issubclass(model, BaseModel)):
                raise TypeError(f"{where}: {part} must be a pydantic model, not {model!r}")

    @property
    def models(self) -> dict[str, type[BaseModel]]:
        """``path``/``query``/``body`` -> the model its parameter declares."""
        hints = typing.get_type_hints(self.handler)
        return {p: hints[p] for p in PARTS if p in hints}

    @property
    def returns(self) -> Any:
        """The return annotation: a model, ``list[model]``, a JSON type, or a raw response."""
        return typing.get_type_hints(self.handler).get("return")

    @property
    def raw(self) -> bool:
        out = self.returns
        return inspect.isclass(out) and issubclass(out, web.StreamResponse)


def route(
    method: str, path: str, roles: frozenset[Role], summary: str, *, status: int = 200,
    media: str = "application/json", body_media: str = "application/json",
    shows: Any = None, headers: tuple[tuple[str, str], ...] = (),
) -> Callable[[Handler], Route]:  # fmt: skip
    """Declare an endpoint (see the module docstring)."""

    def declare(handler: Handler) -> Route:
        return Route(method, path, handler, _with_admin(roles), summary, status, media,
                     body_media, shows, headers)  # fmt: skip

    return declare


def _with_admin(roles: frozenset[Role]) -> frozenset[Role]:
    return roles | {Role.ADMIN} if roles else roles


def add_routes(app: web.Application, routes: typing.Iterable[Route]) -> None:
    """Serve ``routes``; their handlers carry their roles for the auth middleware."""
    for r in routes:
        app.router.add_route(r.method, r.path, _serving(r))


def _serving(r: Route) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    # read from the annotations once, here, not on every request
    models, raw = r.models, r.raw
    out = None if raw else TypeAdapter(r.returns)

    async def serve(request: web.Request) -> web.StreamResponse:
        args: dict[str, Any] = {}
        if "path" in models:
            args["path"] = parse("the path", models["path"], dict(request.match_info))
        if "query" in models:
            args["query"] = parse_query(request, models["query"])
        elif not raw:  # a page or a file may carry a cache-buster; an API call may not
            parse_query(request, None)
        if "body" in models:
            args["body"] = await parse_body(request, models["body"])
        result = await r.handler(request, **args)
        if out is None:
            assert isinstance(result, web.StreamResponse), r.path
            return result
        return json_reply(out.dump_python(result, mode="json"), r.status)

    setattr(serve, ROLES_ATTR, r.roles)
    serve.__name__ = getattr(r.handler, "__name__", "serve")
    return serve


class NumericId(BaseModel):
    """The path of an endpoint on one numbered thing (a token, a webhook, a dead letter)."""

    model_config = ConfigDict(extra="forbid")
    id: int = Field(ge=0, le=2**62, description="Its number.")


# ---- parsing -----------------------------------------------------------------------------------


def parse(where: str, model: type[M], data: Mapping[str, Any]) -> M:
    """``model`` from ``data``; a failure is ``Invalid`` naming each field, never its value."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        unknown = N_("unknown parameter") if where == "the query string" else N_("unknown field")
        raise Invalid(problems(exc, unknown), where) from None


def parse_query(request: web.Request, model: type[M] | None) -> M | None:
    """The query string by ``model``; with no model, any parameter is refused (a typo in a
    parameter's name must not be ignored silently). A repeated parameter is refused too."""
    repeated = sorted({k for k in request.query if len(request.query.getall(k)) > 1})
    if repeated:
        raise Invalid([(k, "given more than once") for k in repeated], "the query string")
    if model is None:
        if request.query:
            raise Invalid([(k, "unknown parameter") for k in sorted(request.query)],
                          "the query string")  # fmt: skip
        return None
    return parse("the query string", model, dict(request.query))


async def parse_body(request: web.Request, model: type[M]) -> M:
    """The JSON body by ``model``; an empty body is ``{}`` (an action with no note)."""
    raw = await request.read()
    try:
        data = pydantic_core.from_json(raw or b"{}", allow_inf_nan=False)
    except ValueError as exc:
        said = _("not valid JSON: {why}").format(why=_short(str(exc)))
        raise Invalid([("(body)", said)], "the body") from None
    if not isinstance(data, dict):
        kind = _json_type(data)
        said = _("expected a JSON object, got {type}").format(type=_(kind))
        raise Invalid([("(body)", said)], "the body")
    return parse("the body", model, data)


def problems(exc: ValidationError, unknown: str = N_("unknown field")) -> list[tuple[str, str]]:
    """(dotted field path, message) of each error; pydantic's ``input`` is left out on purpose.
    A name the model does not know is said in words (``unknown``), the same on every endpoint.
    The messages are in the request's language (``i18n.validation_message``); the paths are not
    translated: they are the API's field names."""
    return [(".".join(str(x) for x in e["loc"]) or "(body)",
             _(unknown) if e["type"] == "extra_forbidden" else _short(validation_message(e)))
            for e in exc.errors(include_url=False, include_input=False)]  # fmt: skip


def _short(text: str, limit: int = 300) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value: Any) -> str:
    names = {list: N_("an array"), str: N_("a string"), bool: N_("a boolean"), int: N_("a number"),
             float: N_("a number"), type(None): "null"}  # fmt: skip
    return names.get(type(value), type(value).__name__)


# ---- answering ---------------------------------------------------------------------------------


def finite(value: Any) -> Any:
    """``value`` with every NaN/Infinity replaced by None, in nested dicts and lists too."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def json_reply(
    value: Any, status: int = 200, content_type: str = "application/json",
    headers: Mapping[str, str] | None = None,
) -> web.Response:  # fmt: skip
    """Strict RFC 8259 JSON (no NaN/Infinity: null), UTF-8. pydantic-core writes it (a third of
    ``json.dumps``'s time on a page of devices); what it cannot write, such as a lone surrogate
    in a string, is written by ``json`` with escapes instead."""
    try:
        body = pydantic_core.to_json(value, inf_nan_mode="null")
    except (pydantic_core.PydanticSerializationError, ValueError):
        body = json.dumps(finite(value), allow_nan=False).encode()
    return web.Response(body=body, status=status, content_type=content_type, charset="utf-8",
                        headers=headers)  # fmt: skip
