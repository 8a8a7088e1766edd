"""Every error answer of the API, in one shape: ``application/problem+json`` (RFC 9457).

    {"type": "urn:gridwatch:problem:invalid", "title": "Invalid request", "status": 422,
     "detail": "the body is invalid: location.grid: Field required",
     "errors": [{"loc": "location.grid", "msg": "Field required"}]}

Handlers raise the registry's errors (``device_registry/errors.py``); ``problem_answers`` is the
one place that turns them into answers, by the ``KINDS`` table. ``type`` is stable for a client
to branch on; ``title`` and ``detail`` are for people. Nothing the client sent is echoed back
whole: validation messages name the field, not its value.

``title`` and ``detail`` are in the language the request's ``Accept-Language`` picks (Chinese
first, English second: ``gridwatch/ground/i18n.py``; without the header, the server's own), with
``Content-Language`` saying which; ``type``, ``status`` and ``errors[].loc`` are the same in every
language. ``problem_answers`` sets the request's language first, so every ``_()`` deeper in the
request (a field's message, a store's NotFound) speaks it too. A detail whose words are the
raise site's own (a sentence built with values) stays as written until that site marks it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from device_registry.errors import (
    Ambiguous,
    BrokerUnavailable,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    RegistryError,
    StoreRejected,
    StoreUnavailable,
    Unauthorized,
)
from device_registry.http.routing import json_reply, problems
from gridwatch.ground import i18n
from gridwatch.ground.i18n import N_, _
from gridwatch.ground.outage import Outage

logger = logging.getLogger(__name__)

MEDIA = "application/problem+json"
_TYPE = "urn:gridwatch:problem:{}"


class FieldError(BaseModel):
    loc: str = Field(description="Dotted path of the offending field, e.g. 'location.grid'.")
    msg: str


class ProblemView(BaseModel):
    """An error answer (RFC 9457)."""

    type: str = Field(description="Stable id of the kind of problem, e.g. "
                      "'urn:gridwatch:problem:invalid'.")  # fmt: skip
    title: str = Field(description="The kind of problem, in words.")
    status: int
    detail: str = Field(description="What went wrong in this request, in words.")
    errors: list[FieldError] = Field(
        default_factory=list, description="For 422: every field that is wrong, and why."
    )


KINDS: list[tuple[type[RegistryError], int, str, str]] = [
    (Unauthorized, 401, "unauthorized", N_("Unauthorized")),
    (Forbidden, 403, "forbidden", N_("Forbidden")),
    (NotFound, 404, "not-found", N_("Not found")),
    (Ambiguous, 409, "ambiguous", N_("Ambiguous id")),
    (Conflict, 409, "conflict", N_("Conflict")),
    (Invalid, 422, "invalid", N_("Invalid request")),
    (StoreRejected, 500, "internal", N_("Internal error")),
    (StoreUnavailable, 503, "store-unavailable", N_("Store unavailable")),
    (BrokerUnavailable, 503, "broker-unavailable", N_("Broker unavailable")),
]
"""Error class -> (status, type, title); the first class the error is an instance of wins. The
title is translated where the answer is made."""

THINGS = {
    "gateway": N_("gateway"),
    "device": N_("device"),
    "registered device": N_("registered device"),
    "alert": N_("alert"),
    "incident": N_("incident"),
    "command": N_("command"),
    "profile": N_("profile"),
    "token": N_("token"),
    "webhook": N_("webhook"),
    "dead letter": N_("dead letter"),
}
"""What a NotFound names (``NotFound.kind``) -> in words; a kind not here is said as raised."""
WHERE = {
    "the request": N_("the request"),
    "the body": N_("the body"),
    "the query string": N_("the query string"),
    "the path": N_("the path"),
    "Last-Event-ID": "Last-Event-ID",
}
"""What an Invalid names as invalid (``Invalid.where``) -> in words; others as raised (a CSV
import's summary, which says how many rows were refused)."""


def problem(
    status: int, kind: str, title: str, detail: str, errors: list[tuple[str, str]] | None = None
) -> web.Response:
    view = ProblemView(type=_TYPE.format(kind), title=title, status=status, detail=detail,
                       errors=[FieldError(loc=f, msg=m) for f, m in errors or []])  # fmt: skip
    headers = {"Content-Language": i18n.current().replace("_", "-"), "Vary": "Accept-Language"}
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="gridwatch"'
    return json_reply(view.model_dump(mode="json"), status, MEDIA, headers)


def answer(exc: RegistryError, request: web.Request) -> web.Response:
    """The problem answer to ``exc`` raised serving ``request``, in the request's language."""
    status, kind, title = next((s, k, _(t)) for cls, s, k, t in KINDS if isinstance(exc, cls))
    if isinstance(exc, Invalid):
        found = [(_cut(loc, _LOC), _cut(plain(msg), _MSG)) for loc, msg in exc.problems[:_LISTED]]
        said = "; ".join(msg if whole(loc) else f"{loc}: {msg}" for loc, msg in found[:_SAID])
        more = len(exc.problems) - min(len(found), _SAID)
        where = _(WHERE[exc.where]) if exc.where in WHERE else exc.where
        detail = _("{where} is invalid: {problems}").format(where=where, problems=said)
        if more:
            detail += _(" (and {more} more)").format(more=more)
        return problem(422, kind, title, detail, found)
    if isinstance(exc, StoreRejected):
        # a statement the database refused is our bug (or a check we lack): log it whole, and
        # answer without the database's words
        logger.error("store refused a statement serving %s %s: %s", request.method, request.path,
                     exc, exc_info=exc)  # fmt: skip
        return problem(status, kind, title, _("the registry could not do this; see its log"))
    if status == 503:
        # one ERROR line when requests start meeting the outage, one INFO when one works again;
        # the answer does not carry the error's text: it names the database's address, and a
        # caller whose token could not even be checked reads it
        _serving(kind).failed(f"{exc} (serving {request.path})")
        unavailable = _UNAVAILABLE.get(kind, N_("try again later"))
        return problem(status, kind, title, _(unavailable))
    return problem(status, kind, title, said_of(exc))


def said_of(exc: RegistryError) -> str:
    """An error's detail in the request's language: a NotFound and an Ambiguous by their facts;
    another by its message when the raise site marked it (``N_``), else as written."""
    if isinstance(exc, NotFound):
        thing = _(THINGS[exc.kind]) if exc.kind in THINGS else exc.kind
        return _("no {thing} {key!r}").format(thing=thing, key=exc.key)
    if isinstance(exc, Ambiguous):
        return _("device id {key!r} is ambiguous; use one of {candidates}").format(
            key=exc.key, candidates=exc.candidates
        )
    message = str(exc)
    return _(message)


_UNAVAILABLE = {
    "store-unavailable": N_("the registry's database cannot be reached now; try again later"),
    "broker-unavailable": N_("the MQTT broker cannot be reached now; try again later"),
}
_OUTAGES: dict[str, Outage] = {}


def _serving(kind: str) -> Outage:
    if kind not in _OUTAGES:
        dependency = "database" if kind == "store-unavailable" else "MQTT broker"
        _OUTAGES[kind] = Outage(logger, "registry API", dependency, "requests answered 503")
    return _OUTAGES[kind]


def served() -> None:
    """A request answered without an outage: any outage the answers met is over."""
    for outage in _OUTAGES.values():
        outage.ok()


# what pydantic puts before the words of a validator's own error: jargon to whoever reads it
_PYDANTIC_PREFIXES = ("Value error, ", "Assertion failed, ")


def plain(msg: str) -> str:
    """A field's message as a sentence for people: without pydantic's ``Value error,`` prefix
    (every validation message of every room passes here on its way out, and nowhere else)."""
    for prefix in _PYDANTIC_PREFIXES:
        if msg.startswith(prefix):
            return msg[len(prefix) :]
    return msg


def whole(loc: str) -> bool:
    """A location in parentheses (``(body)``, ``(top level)``) names no field but the whole
    document: a sentence says the message alone."""
    return loc.startswith("(") and loc.endswith(")")


# a field's path can be the client's own words (an unknown key): cut, like the list's length
_LOC, _MSG, _LISTED, _SAID = 100, 300, 50, 5


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def problem_answers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The outermost middleware: whatever is raised serving a request becomes a problem. It
    sets the request's language first (its task's own context: no other request sees it)."""
    asked = request.headers.get("Accept-Language")
    i18n.use(i18n.negotiate(asked) if asked else None)  # None: the server's own language
    try:
        response = await handler(request)
    except RegistryError as exc:
        return answer(exc, request)
    except ValidationError as exc:  # a model built from what the client sent, deeper in
        found = problems(exc)
        return answer(Invalid(found), request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http(exc, request)
    except Exception:
        # the request's outermost frame: a bug, logged whole; the client gets the same shape
        logger.exception("internal error serving %s %s", request.method, request.path[:200])
        return problem(500, "internal", _("Internal error"),
                       _("the registry could not do this; see its log"))  # fmt: skip
    if response.status < 500 and request.path.startswith("/api/"):  # the API reads the database
        served()
    return response


HTTP_TITLES = {
    reason: reason
    for reason in (
        N_("Bad Request"),
        N_("Not Found"),
        N_("Method Not Allowed"),
        N_("Gone"),
        N_("Request Entity Too Large"),
        N_("Unsupported Media Type"),
        N_("Not Implemented"),
    )
}
"""aiohttp's reasons that reach a person (its ``type`` stays the English reason's)."""


def _http(exc: web.HTTPException, request: web.Request) -> web.Response:
    """aiohttp's own errors (no such route, wrong method, body too large) and the few a handler
    raises for plain HTTP facts (410 Gone, 415, 501), with the handler's words if it gave any."""
    default = f"{exc.status}: {exc.reason}"
    given = exc.text if exc.text and exc.text != default else ""
    detail = _(given) if given else f"{request.method} {request.path[:200]}"
    title = _(HTTP_TITLES[exc.reason]) if exc.reason in HTTP_TITLES else exc.reason
    resp = problem(exc.status, exc.reason.lower().replace(" ", "-"), title, detail)
    if "Allow" in exc.headers:
        resp.headers["Allow"] = exc.headers["Allow"]
    return resp
