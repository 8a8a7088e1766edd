"""Operators acknowledge, resolve and close alerts through the API; roles are enforced."""

from __future__ import annotations

from pathlib import Path

from device_registry import Changes
from device_registry.delivery.runtime import Delivery
from device_registry.http.auth import Role
from device_registry.inventory.downlink import BrokerSettings
from gridwatch.ground.contract import AlertState, Birth, DeviceInfo, PlatformLifecycle
from tests._ops_helpers import now_ms, registry, smoke
from tests.fieldkit import listen
from tests.services import Mosquitto


async def test_operator_walks_an_alert_to_closed_with_notes(tmp_path: Path) -> None:
    async with registry(tmp_path) as reg:
        await reg.ingest(smoke("a1"))
        status, [a] = await reg.call("GET", "/api/v1/alerts/lifecycle", Role.OPERATOR)
        assert status == 200 and a["stage"] == "open" and a["time_limit_min"] == 15
        assert 0 < a["time_left_ms"] <= 15 * 60_000
        # the catalogue's words beside the code; no profile known yet, so no decimals
        assert (a["category_name"], a["responsible_unit"], a["decimals"]) == (
            "烟感火警", "消防救援机构", None,
        )  # fmt: skip
        # its gateway says the device is a Modbus smoke detector: obscuration has two decimals
        info = DeviceInfo(device="sd-001", profile="smoke-detector-modbus", interval_s=2)
        birth = Birth(gateway="gw1", session=1, ts=now_ms(), devices=["sd-001"], device_info=[info])
        await reg.store.apply(Changes(now=now_ms(), status=[birth]))
        _, [a] = await reg.call("GET", "/api/v1/alerts/lifecycle", Role.OPERATOR)
        assert a["decimals"] == 2

        status, a = await reg.call("POST", "/api/v1/alerts/a1/ack", Role.OPERATOR,
                                   {"note": "crew dispatched"})  # fmt: skip
        assert status == 200 and a["stage"] == "acknowledged" and a["acked_by"] == "operator-1"
        status, err = await reg.call("POST", "/api/v1/alerts/a1/close", Role.OPERATOR)
        assert status == 409 and "cannot close an alert that is acknowledged" in err["detail"]
        # the detector still sees smoke: resolving it would hide the fire from every list
        status, err = await reg.call("POST", "/api/v1/alerts/a1/resolve", Role.OPERATOR, {})
        assert status == 409 and err["detail"].startswith(
            "this alert cannot be resolved yet: the sensor still reports Smoke detected "
            "(obscuration 5.2 %/m, threshold 4)."
        )
        await reg.ingest(smoke("a1", state=AlertState.CLEARED))
        status, _ = await reg.call("POST", "/api/v1/alerts/a1/resolve", Role.OPERATOR, {})
        assert status == 200
        status, a = await reg.call("POST", "/api/v1/alerts/a1/close", Role.ADMIN)
        assert status == 200 and a["stage"] == "closed"

        status, detail = await reg.call("GET", "/api/v1/alerts/a1", Role.PLATFORM)
        assert [(s["action"], s["actor"], s["note"]) for s in detail["actions"]] == [
            ("ack", "operator-1", "crew dispatched"),
            ("device_clear", "device", ""),
            ("resolve", "operator-1", ""),
            ("close", "admin-1", ""),
        ]


async def test_roles_and_bad_requests(tmp_path: Path) -> None:
    async with registry(tmp_path) as reg:
        await reg.ingest(smoke("a1"))
        for role in (Role.MAINTENANCE, Role.PLATFORM, Role.INSTALLER):
            status, _ = await reg.call("POST", "/api/v1/alerts/a1/ack", role)
            assert status == 403, role
        async with reg.http.post(f"{reg.url}/api/v1/alerts/a1/ack") as r:
            assert r.status == 401
        status, _ = await reg.call("POST", "/api/v1/alerts/nope/ack", Role.OPERATOR)
        assert status == 404
        _, alert = await reg.call("GET", "/api/v1/alerts/a1", Role.OPERATOR)
        incident = f"/api/v1/incidents/{alert['incident_id']}/ack"
        for role in (Role.MAINTENANCE, Role.PLATFORM, Role.INSTALLER):
            status, _ = await reg.call("POST", incident, role)
            assert status == 403, role
        status, _ = await reg.call("POST", "/api/v1/incidents/nope/ack", Role.OPERATOR)
        assert status == 404
        status, done = await reg.call("POST", incident, Role.OPERATOR, {"note": "crew sent"})
        assert status == 200 and [a["stage"] for a in done["applied"]] == ["acknowledged"]
        # the same mistake is a 422 everywhere, a body's as a query's
        status, err = await reg.call("POST", "/api/v1/alerts/a1/ack", Role.OPERATOR, {"nte": "x"})
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
    for path, method in [("/api/v1/alerts/{id}/ack", "post"), ("/api/v1/health", "get"),
                         ("/api/v1/alerts/stream", "get"), ("/api/v1/webhooks", "post"),
                         ("/api/v1/webhooks/dead-letters/{id}/replay", "post"),
                         ("/api/v1/devices/{id}/readings", "get"),
                         ("/api/v1/incidents/{id}/resolve", "post")]:  # fmt: skip
        assert method in spec["paths"][path], path
    assert {"PlatformLifecycle", "PlatformEscalation", "HealthReport"} <= set(
        spec["components"]["schemas"]
    )


async def test_cleared_and_resolved_alerts_are_closed_at_once(tmp_path: Path) -> None:
    """After a burst, cleared alerts pile up: one call closes them; what may not be closed (the
    sensor still reports it, no such alert) stays, each with the reason."""
    async with registry(tmp_path) as reg:
        await reg.ingest(*(smoke(f"c{n}", grid=f"G-{n}") for n in range(4)), smoke("live"))
        await reg.ingest(*(smoke(f"c{n}", grid=f"G-{n}", state=AlertState.CLEARED)
                           for n in range(3)))  # fmt: skip
        status, _ = await reg.call("POST", "/api/v1/alerts/c2/resolve", Role.OPERATOR,
                                   {"note": "pump restarted"})  # fmt: skip
        assert status == 200
        body = {"alert_ids": ["c0", "c1", "c2", "c3", "live", "nope", "c0"], "note": "after rain"}
        for role in (Role.MAINTENANCE, Role.PLATFORM, Role.INSTALLER):
            status, _ = await reg.call("POST", "/api/v1/alerts/close", role, body)
            assert status == 403, role
        status, done = await reg.call("POST", "/api/v1/alerts/close", Role.OPERATOR, body)
        assert status == 200 and done["closed"] == ["c0", "c1", "c2"]
        skipped = {s["alert_id"]: s["reason"] for s in done["skipped"]}
        assert skipped["nope"] == "no such alert"
        assert skipped["c3"] == skipped["live"] == "cannot close an alert that is open"
        status, left = await reg.call("GET", "/api/v1/alerts/lifecycle", Role.OPERATOR)
        assert sorted(a["alert_id"] for a in left) == ["c3", "live"]
        _, c2 = await reg.call("GET", "/api/v1/alerts/c2", Role.OPERATOR)
        assert (c2["stage"], c2["closed_by"], c2["notes"]) == (
            "closed", "operator-1", {"resolve": "pump restarted", "close": "after rain"},
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


async def test_an_alert_whose_sensor_is_broken_is_resolved_by_override(
    tmp_path: Path, mosquitto: Mosquitto, prefix: str
) -> None:
    """A sensor the flood destroyed keeps reporting nothing new: an operator ends its alert
    deliberately, with a reason; the registry records it and tells the city platform."""
    target = BrokerSettings("127.0.0.1", mosquitto.port, prefix, client_id=f"reg-{prefix}")
    async with listen(mosquitto.port, f"{prefix}/platform/lifecycle/#") as seen, \
            registry(tmp_path, Delivery(mqtt=target, poll_s=0.2)) as reg:  # fmt: skip
        await reg.ingest(smoke("a1"))
        status, err = await reg.call("POST", "/api/v1/alerts/a1/resolve", Role.OPERATOR, {})
        assert status == 409 and err["detail"].endswith(
            "if the sensor is broken or gone, resolve with override and say why in the note."
        )
        # an override must say why, in words
        for body in ({"override": True}, {"override": True, "note": "broken"}):
            status, err = await reg.call("POST", "/api/v1/alerts/a1/resolve", Role.OPERATOR, body)
            assert status == 422, body
            assert "an override needs a note of at least 15 characters saying why" in str(err)
        # only operators and admins end alerts, override or not; ack takes no override
        for role in (Role.MAINTENANCE, Role.PLATFORM, Role.INSTALLER):
            status, _ = await reg.call("POST", "/api/v1/alerts/a1/resolve", role,
                                       {"override": True, "note": WHY})  # fmt: skip
            assert status == 403, role
        status, _ = await reg.call("POST", "/api/v1/alerts/a1/ack", Role.OPERATOR,
                                   {"override": True, "note": WHY})  # fmt: skip
        assert status == 422

        status, a = await reg.call("POST", "/api/v1/alerts/a1/resolve", Role.OPERATOR,
                                   {"override": True, "note": WHY})  # fmt: skip
        assert status == 200 and (a["stage"], a["resolved_by"]) == ("resolved", "operator-1")
        # still reported: closing it needs an override of its own, an admin may give it
        status, _ = await reg.call("POST", "/api/v1/alerts/a1/close", Role.OPERATOR, {})
        assert status == 409
        status, a = await reg.call("POST", "/api/v1/alerts/a1/close", Role.ADMIN,
                                   {"override": True, "note": "closed after the site visit"})  # fmt: skip
        assert status == 200 and a["stage"] == "closed"

        _, detail = await reg.call("GET", "/api/v1/alerts/a1", Role.OPERATOR)
        still = "Smoke detected (obscuration 5.2 %/m, threshold 4); still reported"
        assert [(s["action"], s["actor"], s["override"], s["sensor"]) for s in detail["actions"]
                if s["action"] != "ack"] == [
            ("resolve", "operator-1", True, still), ("close", "admin-1", True, still),
        ]  # fmt: skip
        _, audit = await reg.call("GET", "/api/v1/audit?target=a1", Role.ADMIN)
        assert sorted((e["actor"], e["action"], e["detail"]["override"], e["detail"]["note"])
                      for e in audit) == [
            ("admin-1", "alerts.close", True, "closed after the site visit"),
            ("operator-1", "alerts.resolve", True, WHY),
        ]  # fmt: skip
        await seen.wait_for(lambda s: len(s.messages) >= 3)
    steps = [PlatformLifecycle.model_validate(p) for _, p, _ in seen.messages]
    assert [(m.action, m.override, m.actor, m.sensor) for m in steps] == [
        ("open", False, "centre", ""),
        ("resolve", True, "operator-1", still),
        ("close", True, "admin-1", still),
    ]
    assert steps[1].note == WHY
