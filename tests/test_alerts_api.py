"""Operators move cases through the city's workflow over the API; roles are enforced; refused
steps are 409 problems in words, missing notes 422."""

from __future__ import annotations

from pathlib import Path

from device_registry import Changes
from device_registry.delivery.runtime import Delivery
from device_registry.http.auth import Role
from device_registry.inventory.downlink import BrokerSettings
from gridwatch.ground.contract import AlertState, Birth, DeviceInfo, PlatformLifecycle
from tests._ops_helpers import now_ms, ponding, registry
from tests.fieldkit import listen
from tests.services import Mosquitto


async def test_operator_walks_a_case_through_the_workflow_with_notes(tmp_path: Path) -> None:
    async with registry(tmp_path) as reg:
        await reg.ingest(ponding("a1"))
        status, [a] = await reg.call("GET", "/api/v1/alerts/lifecycle", Role.OPERATOR)
        assert status == 200 and (a["stage"], a["stage_zh"], a["class_code"]) == (
            "reported", "上报", "0406",
        )  # fmt: skip
        assert a["area_class"] == "A" and a["due_at"] is None  # 漕溪北路: a core-area cell
        assert a["department"]["zh"] and a["category_name"]["zh"]  # the catalogue's words
        assert a["decimals"] is None  # no profile known yet
        # its gateway says the device is a ponding-depth gauge: water_depth has three decimals
        info = DeviceInfo(device="wl-001", profile="ponding-depth", interval_s=5)
        birth = Birth(gateway="gw1", session=1, ts=now_ms(), devices=["wl-001"], device_info=[info])
        await reg.store.apply(Changes(now=now_ms(), status=[birth]))
        _, [a] = await reg.call("GET", "/api/v1/alerts/lifecycle", Role.OPERATOR)
        assert a["decimals"] == 3

        status, a = await reg.call("POST", "/api/v1/alerts/a1/file", Role.OPERATOR,
                                   {"note": "seen on the 漕溪北路 camera"})  # fmt: skip
        assert status == 200 and (a["stage"], a["filed_by"], a["dispatched_by"]) == (
            "dispatched", "operator-1", "centre",
        )  # fmt: skip
        assert a["due_at"] == a["filed_at"] + a["time_limit_min"] * 60_000 and not a["overdue"]
        status, err = await reg.call("POST", "/api/v1/alerts/a1/close", Role.OPERATOR)
        assert status == 409 and err["detail"] == "cannot close a case that is dispatched"
        status, a = await reg.call("POST", "/api/v1/alerts/a1/dispose", Role.OPERATOR,
                                   {"note": "inlet cleared"})  # fmt: skip
        assert status == 200 and a["stage"] == "disposed"
        # an inspector's verification says what was found
        status, err = await reg.call("POST", "/api/v1/alerts/a1/verify", Role.OPERATOR, {})
        assert status == 422 and err["errors"] == [{
            "loc": "note", "msg": "verify needs a note saying what the inspector found on site; "
            "none was given"}]  # fmt: skip
        # the water is still there: verifying it would hide the flood from every list
        status, err = await reg.call("POST", "/api/v1/alerts/a1/verify", Role.OPERATOR,
                                     {"note": "looks fine"})  # fmt: skip
        assert status == 409 and err["detail"].startswith(
            "this case cannot be verified yet: the sensor still reports Ponding on the road "
            "(water_depth 0.22 m, threshold 0.15)."
        )
        await reg.ingest(ponding("a1", state=AlertState.CLEARED))
        status, a = await reg.call("POST", "/api/v1/alerts/a1/verify", Role.OPERATOR,
                                   {"note": "road dry, inlet clear"})  # fmt: skip
        assert status == 200 and (a["stage"], a["verified_by"]) == ("verified", "operator-1")
        status, a = await reg.call("POST", "/api/v1/alerts/a1/close", Role.ADMIN)
        assert status == 200 and (a["stage"], a["stage_zh"]) == ("closed", "结案")

        status, detail = await reg.call("GET", "/api/v1/alerts/a1", Role.PLATFORM)
        assert [(s["action"], s["after"], s["actor"]) for s in detail["actions"]] == [
            ("file", "filed", "operator-1"),
            ("dispatch", "dispatched", "centre"),
            ("dispose", "disposed", "operator-1"),
            ("verify", "verified", "operator-1"),
            ("close", "closed", "admin-1"),
        ]
        assert detail["notes"]["verify"] == "road dry, inlet clear"


async def test_a_dispatch_names_another_department_or_is_refused_in_words(
    tmp_path: Path,
) -> None:
    async with registry(tmp_path) as reg:
        await reg.ingest(ponding("a1"), ponding("x1", grid="G-2").model_copy(
            update={"category": "9999"}))  # fmt: skip
        await reg.call("POST", "/api/v1/alerts/a1/file", Role.OPERATOR, {})
        roads = {"code": "XH-RD", "zh": "区道路管理所", "en": "District roads office"}
        status, a = await reg.call("POST", "/api/v1/alerts/a1/dispatch", Role.OPERATOR,
                                   {"note": "roads own this inlet", "department": roads})  # fmt: skip
        assert status == 200 and a["department"] == roads and a["dispatch_count"] == 2
        # a category the catalogue does not know: filed, then dispatched by name only
        status, x = await reg.call("POST", "/api/v1/alerts/x1/file", Role.OPERATOR, {})
        assert status == 200 and (x["stage"], x["department"]) == ("filed", None)
        status, err = await reg.call("POST", "/api/v1/alerts/x1/dispatch", Role.OPERATOR, {})
        assert status == 422 and err["errors"][0]["loc"] == "department"
        assert "no department to dispatch to" in err["errors"][0]["msg"]
        status, x = await reg.call("POST", "/api/v1/alerts/x1/dispatch", Role.OPERATOR,
                                   {"department": roads})  # fmt: skip
        assert status == 200 and x["stage"] == "dispatched"
        # 督办: an operator urges with a note, the stage stays
        status, err = await reg.call("POST", "/api/v1/alerts/x1/urge", Role.OPERATOR, {})
        assert status == 422 and err["errors"][0]["loc"] == "note"
        status, x = await reg.call("POST", "/api/v1/alerts/x1/urge", Role.OPERATOR,
                                   {"note": "called the roads office"})  # fmt: skip
        assert status == 200 and (x["stage"], x["urged"], x["urge_count"]) == (
            "dispatched", True, 1,
        )  # fmt: skip


async def test_roles_and_bad_requests(tmp_path: Path) -> None:
    async with registry(tmp_path) as reg:
        await reg.ingest(ponding("a1"))
        for role in (Role.MAINTENANCE, Role.PLATFORM, Role.INSTALLER):
            status, _ = await reg.call("POST", "/api/v1/alerts/a1/file", role)
            assert status == 403, role
        async with reg.http.post(f"{reg.url}/api/v1/alerts/a1/file") as r:
            assert r.status == 401
        status, _ = await reg.call("POST", "/api/v1/alerts/nope/file", Role.OPERATOR)
        assert status == 404
        _, alert = await reg.call("GET", "/api/v1/alerts/a1", Role.OPERATOR)
        incident = f"/api/v1/incidents/{alert['incident_id']}/file"
        for role in (Role.MAINTENANCE, Role.PLATFORM, Role.INSTALLER):
            status, _ = await reg.call("POST", incident, role)
            assert status == 403, role
        status, _ = await reg.call("POST", "/api/v1/incidents/nope/file", Role.OPERATOR)
        assert status == 404
        status, done = await reg.call("POST", incident, Role.OPERATOR, {"note": "crew sent"})
        assert status == 200 and [a["stage"] for a in done["applied"]] == ["dispatched"]
        # the same mistake is a 422 everywhere, a body's as a query's
        status, err = await reg.call("POST", "/api/v1/alerts/a1/urge", Role.OPERATOR, {"nte": "x"})
        assert status == 422 and err["errors"] == [{"loc": "nte", "msg": "unknown field"}]
        status, err = await reg.call("GET", "/api/v1/alerts/lifecycle?stage=bogus", Role.OPERATOR)
        assert status == 422 and err["errors"][0]["loc"] == "stage"
        status, _ = await reg.call("GET", "/api/v1/webhooks", Role.OPERATOR)
        assert status == 403
        status, _ = await reg.call("GET", "/api/v1/health", Role.PLATFORM)
        assert status == 403  # installers read health (commissioning); the platform does not


async def test_openapi_describes_the_alert_and_health_endpoints(tmp_path: Path) -> None:
    async with registry(tmp_path) as reg, reg.http.get(f"{reg.url}/api/v1/openapi.json") as r:
        spec = await r.json()
    for path, method in [("/api/v1/alerts/{id}/dispose", "post"), ("/api/v1/health", "get"),
                         ("/api/v1/alerts/stream", "get"), ("/api/v1/webhooks", "post"),
                         ("/api/v1/webhooks/dead-letters/{id}/replay", "post"),
                         ("/api/v1/devices/{id}/readings", "get"),
                         ("/api/v1/incidents/{id}/urge", "post")]:  # fmt: skip
        assert method in spec["paths"][path], path
    assert {"PlatformLifecycle", "DispatchRequest", "HealthReport"} <= set(
        spec["components"]["schemas"]
    )


async def test_cleared_alerts_and_verified_cases_are_closed_at_once(tmp_path: Path) -> None:
    """After a burst, cleared alerts pile up: one call closes them; what may not be closed (the
    sensor still reports it, a case not verified, no such alert) stays, each with the reason."""
    async with registry(tmp_path) as reg:
        await reg.ingest(*(ponding(f"c{n}", f"wl-{n}", grid=f"G-{n}") for n in range(4)),
                         ponding("live"))  # fmt: skip
        await reg.ingest(*(ponding(f"c{n}", f"wl-{n}", grid=f"G-{n}", state=AlertState.CLEARED)
                           for n in range(3)))  # fmt: skip
        for action, note in (("file", ""), ("dispose", "pump restarted"),
                             ("verify", "inspector: dry")):  # fmt: skip
            status, _ = await reg.call("POST", f"/api/v1/alerts/c2/{action}", Role.OPERATOR,
                                       {"note": note})  # fmt: skip
            assert status == 200, action
        await reg.call("POST", "/api/v1/alerts/c3/file", Role.OPERATOR, {})
        body = {"alert_ids": ["c0", "c1", "c2", "c3", "live", "nope", "c0"], "note": "after rain"}
        for role in (Role.MAINTENANCE, Role.PLATFORM, Role.INSTALLER):
            status, _ = await reg.call("POST", "/api/v1/alerts/close", role, body)
            assert status == 403, role
        status, done = await reg.call("POST", "/api/v1/alerts/close", Role.OPERATOR, body)
        assert status == 200 and done["closed"] == ["c0", "c1", "c2"]
        skipped = {s["alert_id"]: s["reason"] for s in done["skipped"]}
        assert skipped["nope"] == "no such alert"
        assert skipped["c3"] == "cannot close a case that is dispatched"
        assert skipped["live"].startswith("this case cannot be closed yet: the sensor still")
        status, left = await reg.call("GET", "/api/v1/alerts/lifecycle", Role.OPERATOR)
        assert sorted(a["alert_id"] for a in left) == ["c3", "live"]
        _, c2 = await reg.call("GET", "/api/v1/alerts/c2", Role.OPERATOR)
        assert (c2["stage"], c2["closed_by"], c2["notes"]["close"]) == (
            "closed", "operator-1", "after rain",
        )  # fmt: skip
        # one audit entry says who closed which
        _, [entry] = await reg.call("GET", "/api/v1/audit?target=alerts:3", Role.ADMIN)
        assert (entry["actor"], entry["action"], entry["detail"]["closed"]) == (
            "operator-1", "alerts.close", ["c0", "c1", "c2"],
        )  # fmt: skip
        status, err = await reg.call("POST", "/api/v1/alerts/close", Role.OPERATOR,
                                     {"alert_ids": []})  # fmt: skip
        assert status == 422 and err["errors"][0]["loc"] == "alert_ids"
        for bad in ({"alert_ids": ["x" * 129]}, {"alert_ids": ["c3"] * 1001},
                    {"alert_ids": "c3"}, {"alert_ids": [""]}):  # fmt: skip
            status, err = await reg.call("POST", "/api/v1/alerts/close", Role.OPERATOR, bad)
            assert status == 422 and err["errors"][0]["loc"].startswith("alert_ids"), bad


WHY = "detector destroyed by the water, crew confirmed on site"


async def test_a_case_whose_sensor_is_broken_is_verified_by_override(
    tmp_path: Path, mosquitto: Mosquitto, prefix: str
) -> None:
    """A gauge the flood buried keeps reporting water that is gone: an operator verifies the
    case deliberately, with a reason; the registry records it and tells the city platform."""
    target = BrokerSettings("127.0.0.1", mosquitto.port, prefix, client_id=f"reg-{prefix}")
    async with listen(mosquitto.port, f"{prefix}/platform/lifecycle/#") as seen, \
            registry(tmp_path, Delivery(mqtt=target, poll_s=0.2)) as reg:  # fmt: skip
        await reg.ingest(ponding("a1"))
        for action in ("file", "dispose"):
            await reg.call("POST", f"/api/v1/alerts/a1/{action}", Role.OPERATOR, {})
        status, err = await reg.call("POST", "/api/v1/alerts/a1/verify", Role.OPERATOR,
                                     {"note": "dry"})  # fmt: skip
        assert status == 409 and err["detail"].endswith(
            "if the sensor is broken or gone, verify with override and say why in the note."
        )
        # an override must say why, in words
        for body in ({"override": True, "note": "x"}, {"override": True, "note": "broken"}):
            status, err = await reg.call("POST", "/api/v1/alerts/a1/verify", Role.OPERATOR, body)
            assert status == 422, body
            assert "an override needs a note of at least 15 characters saying why" in str(err)
        # only operators and admins, override or not; dispose takes no override
        for role in (Role.MAINTENANCE, Role.PLATFORM, Role.INSTALLER):
            status, _ = await reg.call("POST", "/api/v1/alerts/a1/verify", role,
                                       {"override": True, "note": WHY})  # fmt: skip
            assert status == 403, role
        status, _ = await reg.call("POST", "/api/v1/alerts/a1/dispose", Role.OPERATOR,
                                   {"override": True, "note": WHY})  # fmt: skip
        assert status == 422

        status, a = await reg.call("POST", "/api/v1/alerts/a1/verify", Role.OPERATOR,
                                   {"override": True, "note": WHY})  # fmt: skip
        assert status == 200 and (a["stage"], a["verified_by"]) == ("verified", "operator-1")
        # still reported: closing it needs an override of its own, an admin may give it
        status, _ = await reg.call("POST", "/api/v1/alerts/a1/close", Role.OPERATOR, {})
        assert status == 409
        status, a = await reg.call("POST", "/api/v1/alerts/a1/close", Role.ADMIN,
                                   {"override": True, "note": "closed after the site visit"})  # fmt: skip
        assert status == 200 and a["stage"] == "closed"

        _, detail = await reg.call("GET", "/api/v1/alerts/a1", Role.OPERATOR)
        still = "Ponding on the road (water_depth 0.22 m, threshold 0.15); still reported"
        assert [(s["action"], s["actor"], s["override"], s["sensor"]) for s in detail["actions"]
                if s["action"] in ("verify", "close")] == [
            ("verify", "operator-1", True, still), ("close", "admin-1", True, still),
        ]  # fmt: skip
        _, audit = await reg.call("GET", "/api/v1/audit?target=a1", Role.ADMIN)
        assert sorted((e["actor"], e["action"], e["detail"]["override"], e["detail"]["note"])
                      for e in audit) == [
            ("admin-1", "alerts.close", True, "closed after the site visit"),
            ("operator-1", "alerts.verify", True, WHY),
        ]  # fmt: skip
        await seen.wait_for(lambda s: len(s.messages) >= 6)
    steps = [PlatformLifecycle.model_validate(p) for _, p, _ in seen.messages]
    assert [(m.action, m.stage, m.override, m.actor) for m in steps] == [
        ("open", "reported", False, "centre"),
        ("file", "filed", False, "operator-1"),
        ("dispatch", "dispatched", False, "centre"),
        ("dispose", "disposed", False, "operator-1"),
        ("verify", "verified", True, "operator-1"),
        ("close", "closed", True, "admin-1"),
    ]
    assert steps[4].note == WHY and steps[4].sensor == still
    assert {(m.class_code, m.area_class) for m in steps} == {("0406", "A")}
    assert steps[2].department is not None and steps[2].department == steps[-1].department
