"""The alerts' endpoints: the alert list, the case workflow's actions (file, dispatch, dispose,
verify, reject, close, urge; on one alert or a whole incident; many closed at once) and one alert
with its case's steps."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from device_registry.alerts.lifecycle import ENDING, Action, NoteRequired, Refused
from device_registry.alerts.operations import Unroutable
from device_registry.alerts.requests import (
    ActionRequest,
    AlertQuery,
    BulkCloseRequest,
    DispatchRequest,
    EndRequest,
    LifecycleQuery,
)
from device_registry.alerts.store import AlertFilter, OpsStore, stages
from device_registry.alerts.views import AlertOpsView, AlertView, BulkClosed, IncidentActed
from device_registry.errors import Conflict, Invalid
from device_registry.http import paging
from device_registry.http.auth import PRINCIPAL, Role, roles
from device_registry.http.routing import Route, route
from device_registry.http.state import STORE, now_ms
from device_registry.inventory.wiring import INSTALLERS

# alerts are for those who act on them
WATCHERS = roles(Role.OPERATOR, Role.MAINTENANCE, Role.PLATFORM)
OPERATOR_ACTIONS = tuple(Action)


def _ops(request: web.Request) -> OpsStore:
    # the registry's own profiles (as installers configured them) say how each point is shown
    installers = request.app.get(INSTALLERS)
    return OpsStore(request.app[STORE], installers.registry.profiles if installers else None)


@route("GET", "/api/v1/alerts", WATCHERS, "Alerts, newest transition first")
async def list_alerts(request: web.Request, query: AlertQuery) -> list[AlertView]:
    store = request.app[STORE]
    return await store.alerts(active_only=query.state == "active", limit=query.limit)


@route("GET", "/api/v1/alerts/lifecycle", WATCHERS, "Alerts with their case: stage, department, "
       "time limit and incident, newest raised first, a page at a time", shows=list[AlertOpsView],
       headers=paging.HEADERS)  # fmt: skip
async def list_alert_ops(request: web.Request, query: LifecycleQuery) -> web.Response:
    start = paging.after(query.after, "alerts", (int, str))
    chosen = AlertFilter().stages if query.stage is None else stages(query.stage.split(","))
    f = AlertFilter(chosen, query.district, query.category, query.incident, query.limit,
                    query.severity, grid=query.grid, q=query.q)  # fmt: skip
    after = None if start is None else (int(start.key[0] or 0), str(start.key[1]))
    views, total, last = await _ops(request).alert_page(
        f, now_ms(), after, None if start is None else start.total
    )
    rows = [v.model_dump(mode="json") for v in views]
    return paging.reply_with(request, "alerts", rows, total, last)


@route("GET", "/api/v1/alerts/{id}", WATCHERS, "One alert with the actions taken on it")
async def get_alert(request: web.Request) -> dict[str, Any]:
    view, steps = await _ops(request).alert(request.match_info["id"], now_ms())
    return {**view.model_dump(mode="json"), "actions": [s.model_dump(mode="json") for s in steps]}


@route("POST", "/api/v1/alerts/close", roles(Role.OPERATOR), "Close many verified cases and "
       "cleared, never filed alerts at once (those that may not be closed are listed with the "
       "reason)")  # fmt: skip
async def close_alerts(request: web.Request, body: BulkCloseRequest) -> BulkClosed:
    return await _ops(request).close_many(body.alert_ids, request[PRINCIPAL], body.note, now_ms())


SUMMARIES = {
    Action.FILE: "File (立案) a reported alert as a case; it is dispatched to the catalogue's "
    "department at once",
    Action.DISPATCH: "Dispatch (派遣) a filed case, to the catalogue's department or the one named",
    Action.DISPOSE: "Report the department's disposal (处置) of a dispatched case",
    Action.VERIFY: "Verify (核查) a disposed case on site, with a note saying what was found "
    "(override: although its sensor still reports the condition, saying why)",
    Action.REJECT: "Reject a disposal that failed verification, with a note: the case is "
    "dispatched again",
    Action.CLOSE: "Close (结案) a verified case, or a reported alert its device cleared (never "
    "filed) (override: although its sensor still reports the condition, saying why)",
    Action.URGE: "Urge (督办) a filed or dispatched case, with a note",
}


def _on_alert(action: Action) -> Route:
    async def act(request: web.Request, body: ActionRequest) -> AlertOpsView:
        principal = request[PRINCIPAL]
        override = isinstance(body, EndRequest) and body.override
        department = body.department.model_dump() if isinstance(body, DispatchRequest) and \
            body.department else None  # fmt: skip
        try:
            return await _ops(request).act(request.match_info["id"], action, principal.name,
                                           body.note, now_ms(), override, principal,
                                           department)  # fmt: skip
        except Refused as exc:
            raise Conflict(str(exc)) from exc
        except (NoteRequired, Unroutable) as exc:
            field = "department" if isinstance(exc, Unroutable) else "note"
            raise Invalid([(field, str(exc))], "the body") from exc

    async def end(request: web.Request, body: EndRequest) -> AlertOpsView:
        return await act(request, body)

    async def dispatch(request: web.Request, body: DispatchRequest) -> AlertOpsView:
        return await act(request, body)

    handler = end if action in ENDING else dispatch if action is Action.DISPATCH else act
    handler.__name__ = f"{action.value}_alert"
    return route("POST", f"/api/v1/alerts/{{id}}/{action.value}", roles(Role.OPERATOR),
                 SUMMARIES[action])(handler)  # fmt: skip


def _on_incident(action: Action) -> Route:
    async def act(request: web.Request, body: ActionRequest) -> IncidentActed:
        try:
            return await _ops(request).act_on_incident(
                request.match_info["id"], action, request[PRINCIPAL].name, body.note, now_ms()
            )
        except NoteRequired as exc:
            raise Invalid([("note", str(exc))], "the body") from exc

    act.__name__ = f"{action.value}_incident"
    return route("POST", f"/api/v1/incidents/{{id}}/{action.value}", roles(Role.OPERATOR),
                 f"{action.value.capitalize()} every alert of an incident that allows it")(act)  # fmt: skip


ROUTES: tuple[Route, ...] = (
    list_alerts,
    # fixed paths before /alerts/{id}: aiohttp tries resources in the order they were added
    list_alert_ops,
    close_alerts,
    get_alert,
    *(_on_alert(a) for a in OPERATOR_ACTIONS),
    *(_on_incident(a) for a in OPERATOR_ACTIONS),
)
