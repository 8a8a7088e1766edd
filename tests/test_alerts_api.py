"""Operators acknowledge, resolve and close alerts through the API; roles are enforced."""

from __future__ import annotations

from pathlib import Path

from device_registry.http.auth import Role
from tests._ops_helpers import registry, smoke


async def test_operator_walks_an_alert_to_closed_with_notes(tmp_path: Path) -> None:
    async with registry(tmp_path) as reg:
        await reg.ingest(smoke("a1"))
        status, [a] = await reg.call("GET", "/api/v1/alerts/lifecycle", Role.OPERATOR)
        assert status == 200 and a["stage"] == "open" and a["time_limit_min"] == 15
        assert 0 < a["time_left_ms"] <= 15 * 60_000

        status, a = await reg.call("POST", "/api/v1/alerts/a1/ack", Role.OPERATOR,
                                   {"note": "crew dispatched"})  # fmt: skip
        assert status == 200 and a["stage"] == "acknowledged" and a["acked_by"] == "operator-1"
        status, err = await reg.call("POST", "/api/v1/alerts/a1/close", Role.OPERATOR)
        assert status == 409 and "cannot close an alert that is acknowledged" in err["detail"]
        status, _ = await reg.call("POST", "/api/v1/alerts/a1/resolve", Role.OPERATOR, {})
        assert status == 200
        status, a = await reg.call("POST", "/api/v1/alerts/a1/close", Role.ADMIN)
        assert status == 200 and a["stage"] == "closed"

        status, detail = await reg.call("GET", "/api/v1/alerts/a1", Role.PLATFORM)
        assert [(s["action"], s["actor"], s["note"]) for s in detail["actions"]] == [
            ("ack", "operator-1", "crew dispatched"),
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
