"""A device's profile is the same wherever the registry shows it: a device its gateway added by
naming it in a birth (no installer registered it) showed ``profile: null`` in the device views
while ``/health`` named the profile from the birth."""

from __future__ import annotations

from pathlib import Path

from device_registry.http.auth import Role
from device_registry.ingest.changes import Changes
from gridwatch.ground.contract import Birth, DeviceInfo, Location, Reading
from tests._ops_helpers import Registry, now_ms, registry

PROFILES = {"sd-001": "smoke-detector-modbus", "wl-001": "water-level-ultrasonic", "x-001": ""}


async def _born(reg: Registry) -> None:
    now = now_ms()
    here = Location(district="310104", street="漕溪北路", grid="310104014024001")
    birth = Birth(gateway="gw1", session=1, ts=now, devices=list(PROFILES), device_info=[
        DeviceInfo(device=n, profile=p, interval_s=60, location=here) for n, p in PROFILES.items()
    ])  # fmt: skip
    ch = Changes(now=now, status=[birth])
    for name in PROFILES:
        r = Reading(device=name, point="battery", value=3.0, unit="V", ts=now)
        ch.latest[("gw1", name, "battery")] = r
        ch.device_seen[("gw1", name)] = now
    await reg.store.apply(ch)


async def test_the_device_views_show_the_profile_health_shows(
    tmp_path: Path, registry_url: str
) -> None:
    async with registry(tmp_path, db_url=registry_url) as reg:
        await _born(reg)
        status, health = await reg.call("GET", "/api/v1/health?gateway=gw1",
                                         Role.OPERATOR)  # fmt: skip
        assert status == 200, health
        by_health = {d["id"]: d["profile"] or None for d in health["devices"]}
        status, listed = await reg.call("GET", "/api/v1/devices?gateway=gw1", Role.OPERATOR)
        assert status == 200, listed
        by_list = {d["id"]: d["profile"] for d in listed}
        shown = {}
        for name in PROFILES:
            status, one = await reg.call("GET", f"/api/v1/devices/gw1:{name}", Role.OPERATOR)
            assert status == 200, one
            shown[one["id"]] = one["profile"]
        expected = {f"gw1:{n}": p or None for n, p in PROFILES.items()}
        assert shown == expected
        assert by_list == expected
        assert by_health == expected
        # and a device is listed under the profile it is shown with
        for profile in ("smoke-detector-modbus", "water-level-ultrasonic"):
            status, only = await reg.call("GET", f"/api/v1/devices?profile={profile}",
                                          Role.OPERATOR)  # fmt: skip
            assert status == 200, only
            assert [d["id"] for d in only] == [k for k, v in expected.items() if v == profile]
