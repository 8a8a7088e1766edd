"""The dashboard in a real browser (Debian's Chromium driven by Playwright), at desktop and phone
sizes: a crew sees the unhealthy devices first with why; an operator acknowledges an alert and its
state changes; a new alert appears live (SSE) without a reload; the device detail charts its
readings. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud_bridge import SqliteSink
from device_registry import Changes
from device_registry.delivery.runtime import Delivery
from device_registry.http.auth import Role
from gridwatch.ground.contract import (
    Birth,
    DeviceHealth,
    DeviceInfo,
    GatewayHealth,
    Location,
    Reading,
    TelemetryBatch,
    new_id,
)
from tests._ops_helpers import Registry, now_ms, registry, smoke

CHROMIUM = "/usr/bin/chromium"
# the flags shared/COMPONENTS.md gives for Debian's Chromium in this environment
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run",
         "--disable-dev-shm-usage"]  # fmt: skip
SIZES = {"desktop": (1280, 800), "phone": (390, 844)}

pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (make test-deps installs it)"
)


async def seed(reg: Registry, sink: SqliteSink) -> None:
    """A gateway with four devices: one not answering, one with a low battery, two fine."""
    now = now_ms()
    here = Location(district="futian", street="shennan-road", grid="FT-0042")
    names = ["wl-001", "sd-001", "sd-002", "wl-002"]
    birth = Birth(gateway="gw1", session=1, ts=now, devices=names, device_info=[
        DeviceInfo(device=n, profile="smoke-detector-modbus" if n.startswith("sd") else
                   "water-level-ultrasonic", interval_s=3600, location=here) for n in names
    ])  # fmt: skip
    readings = [Reading(device="sd-001", point="obscuration", value=0.3 + (i % 5) / 10, unit="%/m",
                        ts=now - (60 - i) * 1000) for i in range(60)]  # fmt: skip
    readings += [Reading(device=n, point="battery", value=2.3 if n == "sd-001" else 3.0, unit="V",
                         ts=now) for n in ("sd-001", "sd-002")]  # fmt: skip
    readings += [Reading(device=n, point="level", value=1.2, unit="m", ts=now) for n in names[2:]]
    health = GatewayHealth(id=new_id(), gateway="gw1", seq=1, session=1, ts=now, devices=[
        DeviceHealth(device="wl-001", online=False, reads_ok=10, reads_failed=5,
                     consecutive_failures=5, last_ok=now - 30_000),
    ])  # fmt: skip
    batch = TelemetryBatch(id=new_id(), gateway="gw1", seq=1, session=1, readings=readings)
    ch = Changes(now=now, status=[birth], health=[health])
    for r in readings:
        ch.latest[("gw1", r.device, r.point)] = r
        ch.device_seen[("gw1", r.device)] = r.ts
    await reg.store.apply(ch)
    await sink.write([batch])
    await reg.ingest(smoke("a1", device="sd-001", gateway="gw1"))


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Registry]:
    sink = await SqliteSink.open(tmp_path / "telemetry.db")
    try:
        async with registry(tmp_path, Delivery(poll_s=0.2, history=sink.history)) as reg:
            await seed(reg, sink)
            yield reg
    finally:
        await sink.close()


@pytest.mark.parametrize("size", list(SIZES))
async def test_crew_and_operator_views(site: Registry, size: str, artifacts: Path) -> None:
    from playwright.async_api import async_playwright, expect

    width, height = SIZES[size]
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": width, "height": height})
            await page.goto(f"{site.url}/dashboard")

            # log in with an operator's token, as the API's tokens and roles
            await page.fill("#token", site.tokens[Role.OPERATOR])
            await page.click("#login-form button[type=submit]")

            # maintenance view: unhealthy devices first, grouped by district and grid, with why
            offline = page.locator('[data-device="gw1:wl-001"]')
            await expect(offline).to_contain_text("not answering: 5 consecutive failed reads")
            await expect(page.locator('[data-device="gw1:sd-001"]')).to_contain_text(
                "battery low: 2.3 V"
            )
            cards = await page.locator("#health-list article[data-device]").all_inner_texts()
            assert "wl-001" in cards[0] or "wl-001" in cards[1]  # unhealthy before healthy
            assert "sd-002" in cards[2] or "sd-002" in cards[3]
            await expect(page.locator("h3.district").first).to_have_text("futian")
            assert await page.evaluate("document.documentElement.scrollWidth") <= width
            await page.screenshot(path=str(artifacts / f"dashboard-health-{size}.png"),
                                  full_page=True)  # fmt: skip

            # operator view: acknowledge, and the state changes
            await page.click("#nav-alerts")
            card = page.locator('[data-alert="a1"]')
            await expect(card.locator(".badge.stage")).to_have_text("open")
            await expect(card.locator(".timeleft")).to_contain_text("left")
            await card.locator("input").fill("crew on the way")
            await card.locator('button[data-act="ack"]').click()
            await expect(card.locator(".badge.stage")).to_have_text("acknowledged")
            await expect(card).to_contain_text("acknowledged by operator-1")
            await expect(page.locator("#live")).to_have_text("live")

            # a new alert arrives at the centre: the page shows it without a reload
            await site.ingest(smoke("a2", device="sd-002", gateway="gw1", grid="FT-0050"))
            await expect(page.locator('[data-alert="a2"] .badge.stage')).to_have_text("open")
            # a second detector in a1's grid cell within the minute: one incident of two alerts
            await site.ingest(smoke("a3", device="sd-003", gateway="gw1"))
            await expect(card.locator(".badge.incident")).to_have_text("incident of 2")
            assert await page.evaluate("document.documentElement.scrollWidth") <= width
            await page.screenshot(path=str(artifacts / f"dashboard-alerts-{size}.png"),
                                  full_page=True)  # fmt: skip

            # device detail: identity, location, health and a chart of recent readings
            await card.locator("a").first.click()
            detail = page.locator("#device-detail")
            await expect(detail).to_contain_text("gw1:sd-001")
            await expect(detail).to_contain_text("battery low: 2.3 V")
            await expect(detail.locator("svg.chart polyline").first).to_be_visible()
            await page.screenshot(path=str(artifacts / f"dashboard-device-{size}.png"),
                                  full_page=True)  # fmt: skip
        finally:
            await browser.close()

    _, detail = await site.call("GET", "/api/v1/alerts/a1", Role.ADMIN)
    assert detail["actions"][0]["note"] == "crew on the way"


async def test_dashboard_needs_a_valid_token(site: Registry) -> None:
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{site.url}/dashboard")
            await page.fill("#token", "not-a-token")
            await page.click("#login-form button[type=submit]")
            await expect(page.locator("#login-error")).to_contain_text("unknown or revoked token")
            await expect(page.locator("#health")).to_be_hidden()
        finally:
            await browser.close()
