"""The dashboard in a real browser (Debian's Chromium driven by Playwright), at desktop and phone
sizes: a crew sees the unhealthy devices first with why; an operator files a case, the centre
dispatches it, its disposal is reported, and the card follows each stage; a new alert appears live (SSE) without a reload; the device detail charts its
readings. Hostile ids, names and labels show as text and run nothing; the token stays in an
HttpOnly cookie. Screenshots go to test-artifacts/."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from cloud_bridge import SqliteSink
from device_registry import Changes
from device_registry.db.tables import Device
from device_registry.delivery.runtime import OPS, Delivery
from device_registry.http.auth import SYSTEM, Role, TokenRequest, issue
from gridwatch.ground.contract import (
    AlertState,
    Birth,
    BusHealth,
    Death,
    DeviceHealth,
    DeviceInfo,
    GatewayHealth,
    Location,
    Reading,
    TelemetryBatch,
    new_id,
)
from tests._ops_helpers import CALIXI_NORTH, Registry, now_ms, ponding, registry, smoke

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
    here = Location(district="310104", street="漕溪北路", grid=CALIXI_NORTH)
    names = ["wl-001", "sd-001", "sd-002", "wl-002"]
    birth = Birth(gateway="gw1", session=1, ts=now, devices=names, device_info=[
        DeviceInfo(device=n, profile="smoke-detector-modbus" if n.startswith("sd") else
                   "water-level-ultrasonic", interval_s=3600, location=here) for n in names
    ])  # fmt: skip
    # half an hour of obscuration every 30 s, with eight minutes missing in the middle (a gap), and
    # the alarm bit going on and off again (on/off steps)
    readings = [Reading(device="sd-001", point="obscuration", value=0.33812767 + (i % 5) / 10,
                        unit="%/m", ts=now - (60 - i) * 30_000)
                for i in range(60) if not 25 <= i < 41]  # fmt: skip
    readings += [Reading(device="sd-001", point="alarm", value=40 <= i < 50, unit="",
                         ts=now - (60 - i) * 30_000) for i in range(0, 60, 2)]  # fmt: skip
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
    # water on 漕溪北路 under the storm-water inlet wl-002 watches: a case of road waterlogging
    await reg.ingest(ponding("a1", device="wl-002"))


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
            await expect(page.locator("h3.district").first).to_have_text("Xuhui District")
            assert await page.evaluate("document.documentElement.scrollWidth") <= width
            await page.screenshot(path=str(artifacts / f"dashboard-health-{size}.png"),
                                  full_page=True)  # fmt: skip

            # operator view: a reported case is filed, the centre dispatches it to the catalogue's
            # department, the department's disposal is reported
            await page.click("#nav-alerts")
            card = page.locator('[data-alert="a1"]')
            await expect(card.locator(".badge.stage")).to_have_text("reported")
            # the catalogue's words beside the class code, and the value as read
            await expect(card.locator(".code")).to_have_text("0406")
            await expect(card.locator(".catname")).to_have_text("Road waterlogging")
            await expect(card.locator(".reading")).to_have_text("Ponding on the road: 0.220 m")
            await expect(page.locator("#alerts-title")).to_have_text(
                "Open work: 1 case in 1 incident"
            )
            await card.locator("input").fill("crew on the way")
            await card.locator('button[data-act="file"]').click()
            await expect(card.locator(".badge.stage")).to_have_text("dispatched")
            await expect(card.locator(".who-filed")).to_contain_text("filed by operator-1")
            await expect(card).to_contain_text("“crew on the way”")
            await expect(card.locator(".who-dispatched")).to_contain_text("by the centre")
            await expect(card.locator(".department")).to_contain_text("department: ")
            await expect(card.locator(".timeleft")).to_contain_text("left")
            await expect(page.locator("#live")).to_have_text("live")

            # a new case arrives at the centre: the page shows it without a reload
            await site.ingest(ponding("a2", device="wl-001", grid="310104014024002"))
            await expect(page.locator('[data-alert="a2"] .badge.stage')).to_have_text("reported")
            # a second sensor in a1's grid cell within the minute: one incident, one case
            await site.ingest(ponding("a3", device="wl-003", grid=CALIXI_NORTH))
            incident = page.locator("section.incident").filter(has=card)
            await expect(incident.locator(".badge.incident")).to_have_text("incident of 2")

            # the department reports disposal; the water is still there: no verification yet,
            # and the card says why
            await card.locator('button[data-act="dispose"]').click()
            await expect(card.locator(".badge.stage")).to_have_text("disposed")
            await expect(card.locator('button[data-act="verify"]')).to_have_count(0)
            await expect(card.locator(".still")).to_contain_text("Sensor still reports it")
            assert await page.evaluate("document.documentElement.scrollWidth") <= width
            await page.screenshot(path=str(artifacts / f"dashboard-alerts-{size}.png"),
                                  full_page=True)  # fmt: skip

            # device detail: identity, location, health and a chart of recent readings
            await page.goto(f"{site.url}/dashboard#/device/gw1:sd-001")
            detail = page.locator("#device-detail")
            await expect(detail).to_contain_text("gw1:sd-001")
            await expect(detail).to_contain_text("battery low: 2.3 V")
            await expect(detail.locator("svg.chart polyline").first).to_be_visible()
            await expect(detail).to_contain_text("obscuration: 0.74 %/m")  # not 0.73812767
            level = detail.locator('[data-point="obscuration"] svg.chart')
            # a time axis, the smoke rule's limit as a line, a gap where readings are missing
            assert await level.locator(".xlabel").count() >= 2
            await expect(level.locator("text.limit-label")).to_have_text("alarm above 4.00")
            await expect(level.locator("polyline.series")).to_have_count(2)
            await expect(level.locator("rect.gap")).to_have_count(1)
            # the alarm bit: steps on an on/off scale, not a line on -1..1
            alarm = detail.locator('[data-point="alarm"] svg.chart.onoff')
            await expect(alarm.locator("path.steps")).to_have_count(1)
            await expect(alarm.locator("text.ylabel")).to_have_text(["on", "off"])
            await expect(alarm.locator("rect.on")).to_have_count(1)  # one stretch of "on"
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
            await expect(page.locator("#login-error")).to_contain_text(
                "This token is unknown or has been revoked"
            )
            await expect(page.locator("#health")).to_be_hidden()

            # a crew logs in; the session outlives a reload, and ends with "Log out"
            await page.fill("#token", site.tokens[Role.MAINTENANCE])
            await page.click("#login-form button[type=submit]")
            await expect(page.locator("#who")).to_have_text("maintenance-1 (maintenance)")
            await expect(page.locator("#health-list article[data-device]").first).to_be_visible()
            assert await page.evaluate("document.cookie") == ""
            await page.reload()
            await expect(page.locator("#health")).to_be_visible()
            # no stream for crews: the page refreshes by the clock and says when it last did
            await expect(page.locator("#live")).to_have_text(re.compile(r"^updated \d"))
            await page.click("#logout")
            await expect(page.locator("#login")).to_be_visible()
            assert await page.context.cookies() == []
            await page.reload()
            await expect(page.locator("#login")).to_be_visible()
            await expect(page.locator("#health")).to_be_hidden()
        finally:
            await browser.close()


async def _log_in(page: Any, url: str, token: str, where: str = "") -> None:
    await page.goto(f"{url}/dashboard{where}")
    await page.fill("#token", token)
    await page.click("#login-form button[type=submit]")


async def test_a_note_survives_an_alert_burst_and_incidents_act_as_one(
    site: Registry, artifacts: Path
) -> None:
    """An operator types a note while a burst of cases arrives live: the note, its focus and its
    caret survive every refresh. The incident's buttons act on all its cases. Filters narrow the
    list, and verified cases are closed with one button (and a second tap)."""
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await _log_in(page, site.url, site.tokens[Role.OPERATOR], "#/alerts")
            await expect(page.locator("#live")).to_have_text("live")
            a1 = page.locator('[data-alert="a1"]')
            note = a1.locator("input.note")
            await note.click()
            await page.keyboard.type("crew 12 at the")

            # the burst: eight cases in other cells and another district, each a live refresh
            for n in range(8):
                district = "310105" if n % 2 else "310104"
                await site.ingest(ponding(f"b{n}", device=f"wl-1{n}", grid=f"G-{n}").model_copy(
                    update={"location": Location(district=district, grid=f"G-{n}")}))  # fmt: skip
                await expect(page.locator(f'[data-alert="b{n}"]')).to_have_count(1)
            await expect(page.locator("#alerts-title")).to_have_text(
                "Open work: 9 cases in 9 incidents"
            )
            await expect(note).to_have_value("crew 12 at the")
            assert await page.evaluate("document.activeElement.dataset.key") == "alert:a1"
            await page.keyboard.type(" pump")  # typing goes on where it was
            await expect(note).to_have_value("crew 12 at the pump")

            # a second sensor in a1's cell: one incident; its button files both
            await site.ingest(ponding("a3", device="wl-003"))
            incident = page.locator("section.incident").filter(has=a1)
            await expect(incident.locator(".badge.incident")).to_have_text("incident of 2")
            await expect(note).to_have_value("crew 12 at the pump")  # moved into the incident
            await incident.locator(".incident-head input.note").fill("pumps called")
            await incident.locator('button[data-inc-act="file"]').click()
            await expect(incident.locator(".incident-head .msg")).to_contain_text("filed.")
            await expect(a1.locator(".badge.stage")).to_have_text("dispatched")
            await expect(a1).to_contain_text("“pumps called”")
            await page.screenshot(path=str(artifacts / "dashboard-incident-desktop.png"),
                                  full_page=True)  # fmt: skip

            # the filters: what is listed, and the heading says it
            await page.select_option("#f-district", "310105")
            await expect(page.locator("#alerts-title")).to_have_text(
                "Open work: 4 cases in 4 incidents (310105)"
            )
            await expect(page.locator("#alerts-list article[data-alert]")).to_have_count(4)
            await page.select_option("#f-district", "")

            # disposed, the water gone, verified by an inspector: one button closes the verified
            await site.call("POST", "/api/v1/alerts/a1/dispose", Role.OPERATOR, {"note": "pumped"})
            await site.ingest(ponding("a1", device="wl-002", state=AlertState.CLEARED))
            await site.ingest(ponding("a3", device="wl-003", state=AlertState.CLEARED))
            await page.select_option("#f-stage", "disposed")
            verify = a1.locator('button[data-act="verify"]')
            await expect(verify).to_be_visible()
            await verify.click()  # without a note: asked for, nothing sent
            await expect(a1.locator(".msg")).to_contain_text("Say what the inspection found")
            await a1.locator("input.note").fill("road dry, inlet clear")
            await verify.click()
            await page.select_option("#f-stage", "done")
            await expect(a1.locator(".badge.stage")).to_have_text("verified")
            await expect(a1.locator(".who-verified")).to_contain_text("verified by operator-1")
            close = page.locator("#close-done")
            await expect(close).to_have_text("Close 1 verified or cleared")
            await close.click()
            await expect(close).to_have_text("Tap again to close 1 cases")
            await close.click()
            await expect(page.locator("#alerts-msg")).to_have_text("Closed 1 case.")
            await expect(a1).to_have_count(0)
            await expect(close).to_be_hidden()
        finally:
            await browser.close()
    _, closed = await site.call("GET", "/api/v1/alerts/a1", Role.ADMIN)
    assert closed["stage"] == "closed"


async def test_a_refused_verification_is_said_in_the_card(site: Registry) -> None:
    """The water comes back between the page's refresh and the inspector's tap: the API refuses,
    and the card says why in words (no pop-up), then shows the case as it is."""
    from playwright.async_api import Dialog, Route, async_playwright, expect

    dialogs: list[str] = []

    async def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    async def no_stream(route: Route) -> None:
        await route.abort()  # no live refresh: the page cannot know before the tap

    for step in ("file", "dispose"):
        await site.call("POST", f"/api/v1/alerts/a1/{step}", Role.OPERATOR, {"note": ""})
    await site.ingest(ponding("a1", device="wl-002", state=AlertState.CLEARED))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 390, "height": 844})
            page.on("dialog", dismiss)
            await page.route("**/api/v1/alerts/stream", no_stream)
            await _log_in(page, site.url, site.tokens[Role.OPERATOR], "#/alerts")
            await page.select_option("#f-stage", "disposed")
            a1 = page.locator('[data-alert="a1"]')
            await expect(a1.locator('button[data-act="verify"]')).to_be_visible()
            await site.ingest(ponding("a1", device="wl-002"))  # water again
            await a1.locator("input.note").fill("looked dry from the corner")
            await a1.locator('button[data-act="verify"]').click()
            await expect(a1.locator(".msg")).to_contain_text("the sensor still reports")
            await expect(a1.locator('button[data-act="verify"]')).to_have_count(0)
        finally:
            await browser.close()
    assert dialogs == []


async def test_a_broken_sensor_is_verified_anyway_with_a_reason(
    site: Registry, artifacts: Path
) -> None:
    """The level sensor the flood destroyed reports water for ever: the card offers the operator
    "Verify anyway…", asks for the reason in the card (no pop-up), refuses to send without one,
    and sends the override with it; the case is verified, recorded as an override."""
    from playwright.async_api import Dialog, Request, async_playwright, expect

    dialogs: list[str] = []
    sent: list[Any] = []

    async def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    def posted(request: Request) -> None:
        if request.method == "POST" and "/api/v1/alerts/" in request.url:
            sent.append(request.post_data_json)

    for step in ("file", "dispose"):
        await site.call("POST", f"/api/v1/alerts/a1/{step}", Role.OPERATOR, {"note": ""})
    why = "level sensor destroyed by the water, crew saw it"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("dialog", dismiss)
            page.on("request", posted)
            await _log_in(page, site.url, site.tokens[Role.OPERATOR], "#/alerts")
            a1 = page.locator('[data-alert="a1"]')
            await expect(a1.locator(".still")).to_have_text(
                "Sensor still reports it: verify once it clears. If the sensor is broken or "
                "gone, verify anyway and say why."
            )
            await a1.locator("button[data-anyway]").click()
            why_box = a1.locator("input.why")
            await expect(why_box).to_be_focused()
            await expect(a1.locator("button[data-anyway]")).to_have_count(0)
            go = a1.locator('button[data-act="verify"][data-override]')
            await expect(go).to_have_text("Verify against the sensor")
            await why_box.fill("broken")  # not a reason: said in the card, nothing sent
            await go.click()
            await expect(a1.locator(".msg")).to_contain_text(
                "Say why the sensor is not to be believed, in at least 15 characters"
            )
            assert sent == []
            await why_box.fill(why)
            assert await page.evaluate("document.documentElement.scrollWidth") <= 1280
            await page.screenshot(path=str(artifacts / "dashboard-override-desktop.png"),
                                  full_page=True)  # fmt: skip
            # Cancel folds it away; opened again, it asks anew
            await a1.locator("button[data-cancel]").click()
            await expect(why_box).to_have_count(0)
            await expect(a1.locator(".msg")).to_have_text("")
            await a1.locator("button[data-anyway]").click()
            await why_box.fill(why)
            await go.click()
            await expect(a1).to_have_count(0)  # verified: no longer open work
        finally:
            await browser.close()
    assert dialogs == []
    assert sent == [{"note": why, "override": True}]
    _, detail = await site.call("GET", "/api/v1/alerts/a1", Role.OPERATOR)
    assert (detail["stage"], detail["verified_by"]) == ("verified", "operator-1")
    assert [(s["action"], s["override"]) for s in detail["actions"]][-1] == ("verify", True)


async def test_device_views_carry_each_points_decimals_not_rounded_values(site: Registry) -> None:
    """The views the device page reads: values as read (a client may want them all), each with
    the decimals its point is shown with, from the device's profile (smoke-detector-modbus)."""
    status, dev = await site.call("GET", "/api/v1/devices/gw1:sd-001", Role.OPERATOR)
    assert status == 200
    shown = {p: (v["value"], v["decimals"]) for p, v in dev["values"].items()}
    assert shown["battery"] == (2.3, 2) and shown["alarm"][1] is None
    assert shown["obscuration"][1] == 2 and shown["obscuration"][0] == pytest.approx(0.73812767)
    status, read = await site.call(
        "GET", "/api/v1/devices/gw1:sd-001/readings?point=obscuration&since=0", Role.OPERATOR
    )
    assert status == 200 and read["decimals"] == 2
    assert read["readings"][-1]["value"] == pytest.approx(0.73812767)  # not rounded


async def test_a_crew_sees_what_it_may_do_and_no_broken_stream(
    site: Registry, artifacts: Path
) -> None:
    """Maintenance may read alerts, not act on them or read the live stream: the page offers no
    button that would be refused, opens no stream, and its header says when the page was last
    updated, never "reconnecting". After a burst the phone lists the open work compactly."""
    from playwright.async_api import Request, Route, async_playwright, expect

    asked: list[str] = []

    async def no_network(route: Route) -> None:
        await route.abort("internetdisconnected")

    await site.ingest(*(ponding(f"c{n}", device=f"wl-2{n}", grid=f"C-{n}") for n in range(90)))
    await site.ingest(*(ponding(f"c{n}", device=f"wl-2{n}", grid=f"C-{n}",
                                state=AlertState.CLEARED) for n in range(80)))  # fmt: skip
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 390, "height": 844})

            def requested(request: Request) -> None:
                asked.append(urlsplit(request.url).path)

            page.on("request", requested)
            await _log_in(page, site.url, site.tokens[Role.MAINTENANCE], "#/alerts")
            await expect(page.locator("#alerts-title")).to_have_text(
                "Open work: 11 cases in 11 incidents"
            )
            await expect(page.locator("#alerts-summary")).to_contain_text(
                "80 verified or cleared, to close"
            )
            await expect(page.locator("#live")).to_have_text(re.compile(r"^updated \d"))
            assert await page.locator("button[data-act], button[data-inc-act]").count() == 0
            assert await page.locator("button[data-anyway]").count() == 0  # no override either
            assert await page.locator("input.note").count() == 0
            await expect(page.locator("#close-done")).to_be_hidden()
            assert "/api/v1/alerts/stream" not in asked
            # a refusal, had one happened, reads as a sentence for the crew
            words = await page.evaluate('said({status: 403}, "dispatch this case")')
            assert words == "Your role (maintenance) may not dispatch this case."
            assert await page.evaluate("document.documentElement.scrollWidth") <= 390
            height = await page.evaluate("document.documentElement.scrollHeight")
            await page.screenshot(path=str(artifacts / "dashboard-alerts-crew-phone.png"),
                                  full_page=True)  # fmt: skip
            # 11 open cases of 91 not closed: the phone shows the open work, compactly
            assert height < 11 * 200, height
            await expect(page.locator("#live")).not_to_have_text("reconnecting")

            # without a stream, the clock brings news: a new alert shows within a poll
            await site.ingest(ponding("late", device="wl-999", grid="L-1"))
            await expect(page.locator('[data-alert="late"]')).to_have_count(1, timeout=15_000)
            # and when the registry cannot be reached, the header says since when, in words
            await page.route("**/api/v1/alerts/lifecycle*", no_network)
            await expect(page.locator("#live")).to_have_text(
                re.compile(r"^not updated since .+: no connection$"), timeout=15_000
            )
            await page.unroute("**/api/v1/alerts/lifecycle*")

            # an installer reads health while commissioning (issue 12 #7), not the alerts
            await page.click("#logout")
            await _log_in(page, site.url, site.tokens[Role.INSTALLER])
            await expect(page.locator("#nav-health")).to_be_visible()
            await expect(page.locator("#nav-alerts")).to_be_hidden()
            await expect(page.locator("#nothing")).to_be_hidden()
        finally:
            await browser.close()


# ---- hostile data: gateways choose ids, units and messages; people choose names and labels ----


def hostile(where: str, slash: bool = True) -> str:
    """Text that runs script wherever a page pastes it into HTML: it breaks out of an attribute
    (and fires without a click, ``content-visibility``), opens an ``<img>`` whose error handler
    runs, and (``slash``) a ``<script>``. Each marks ``window.__pwned`` and asks for a URL with
    ``planted`` in it, so a test sees any of them run."""
    attr = (f'" style="display:block;content-visibility:auto" oncontentvisibilityautostatechange='
            f"\"window.__pwned='{where}';fetch('planted-{where}-attr')\" x=\"")  # fmt: skip
    tag = f"'\"><img src=planted-{where} onerror=\"window.__pwned='{where}'\">"
    script = f"<script>window.__pwned='{where}'</script><svg onload=alert('{where}')>"
    return where + attr + tag + (script if slash else "")


def short(where: str) -> str:
    """Hostile text within the contract's length limits (an alert's place is re-checked when its
    platform message is built)."""
    return f'{where}\'"><img src=planted-{where} onerror="window.__pwned=1">'


# ids go into URLs: no '/' (a path separator) and no ':' (the registry id's separator) there
GATEWAY = "gw'\"><img src=planted-gw onerror=\"window.__pwned='gw'\">"
DEVICE = "sd'\"><img src=planted-dev onerror=\"alert('dev')\">"
ALERT = hostile("alert", slash=False)


async def seed_hostile(reg: Registry) -> str:
    """A gateway, device and two alerts whose every text field is hostile; returns the device's
    registry id. Built without validation (``model_construct``, ``model_copy``): the bridge now
    refuses such ids and names at decode, but rows stored before the contract had its ranges,
    and whatever a future path lets through, must be shown just as safely."""
    now = now_ms()
    here = Location(district=short("district"), street=short("street"), grid=short("grid"))
    info = DeviceInfo.model_construct(device=DEVICE, profile=hostile("profile"), interval_s=3600,
                                      location=here)  # fmt: skip
    birth = Birth.model_construct(gateway=GATEWAY, session=1, ts=now, devices=[DEVICE],
                                  device_info=[info])  # fmt: skip
    reading = Reading.model_construct(device=DEVICE, point=hostile("point"),
                                      value=hostile("value"), unit=hostile("unit"), ts=now)  # fmt: skip
    ch = Changes(now=now, status=[birth])
    ch.latest[(GATEWAY, DEVICE, reading.point)] = reading
    ch.device_seen[(GATEWAY, DEVICE)] = now
    await reg.store.apply(ch)
    first = smoke("a1").model_copy(update={
        "alert_id": ALERT, "device": DEVICE, "gateway": GATEWAY,
        "location": Location(district=short("a-dist"), grid=short("a-grid")),
    })  # fmt: skip
    second = smoke("a2", grid="310104017021099").model_copy(update={
        "alert_id": hostile("alert2"), "device": DEVICE, "gateway": GATEWAY,
        "category": hostile("category"), "unit": hostile("aunit"), "message": hostile("message"),
        "location": here,
    })  # fmt: skip
    await reg.ingest(first, second)
    device_id = f"{GATEWAY}:{DEVICE}"
    # an installer's labels (the API accepts any text in them); set in the store, as the API's
    # PATCH takes only devices an installer registered, whose ids are plain
    async with reg.store.transaction() as s:
        row = await s.get(Device, device_id)
        assert row is not None
        row.labels = {"crew": hostile("label")}
    return device_id


async def test_hostile_data_is_shown_as_text_and_runs_nothing(tmp_path: Path) -> None:
    from playwright.async_api import ConsoleMessage, Dialog, Request, async_playwright, expect

    dialogs: list[str] = []
    planted: list[str] = []
    console: list[str] = []

    async def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    def requested(request: Request) -> None:
        # the payloads' relative URLs resolve to /planted-...; API calls merely quote them
        if urlsplit(request.url).path.startswith("/planted"):
            planted.append(request.url)

    def logged(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            console.append(msg.text)

    async with registry(tmp_path) as reg, async_playwright() as pw:
        device_id = await seed_hostile(reg)
        # an admin may name a token anything: the name shows as "disposal reported by ..."
        name = "<img src=planted-name onerror=alert('name')>"
        crew = await issue(reg.store, TokenRequest(name=name, role=Role.OPERATOR), SYSTEM)
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = await browser.new_context()
            page = await context.new_page()
            page.on("dialog", dismiss)
            page.on("request", requested)
            page.on("console", logged)
            answer = await page.goto(f"{reg.url}/dashboard")
            assert answer is not None
            csp = answer.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "object-src 'none'" in csp, csp
            assert answer.headers["x-content-type-options"] == "nosniff"
            await page.fill("#token", crew.token)
            await page.click("#login-form button[type=submit]")

            # the crew's view: the device's id, profile and location, as text
            card = page.locator("#health-list article[data-device]").first
            await expect(card).to_have_attribute("data-device", device_id)
            await expect(card).to_contain_text(DEVICE)
            await expect(card).to_contain_text(hostile("profile"))
            await expect(page.locator("#health-list h3.district")).to_have_text(short("district"))
            await expect(page.locator("#health-list h4.grid")).to_have_text(short("grid"))

            # the operator's: ids in attributes, category, message, unit in text
            await page.click("#nav-alerts")
            alert = page.locator("#alerts-list article[data-alert]").filter(
                has_text="Smoke detected"
            )
            await expect(alert).to_have_attribute("data-alert", ALERT)
            await expect(alert).to_contain_text(short("a-dist"))
            other = page.locator("#alerts-list article[data-alert]").filter(
                has_text="planted-message"
            )
            await expect(other).to_have_attribute("data-alert", hostile("alert2"))
            for text in ("category", "message", "aunit"):
                await expect(other).to_contain_text(hostile(text))
            await alert.locator("input.note").fill(hostile("note"))  # people's words, shown back
            await alert.locator('button[data-act="dispose"]').click()
            await expect(alert.locator(".badge.stage")).to_have_text("disposed")
            await expect(alert).to_contain_text(f"disposal reported by {name}")
            await expect(alert).to_contain_text(hostile("note"))

            # the device's page: labels, point, value and unit
            await alert.locator(".meta a").first.click()
            detail = page.locator("#device-detail")
            await expect(detail).to_contain_text(f"crew={hostile('label')}")
            await expect(detail).to_contain_text(f"{hostile('point')}: {hostile('value')}")
            await expect(detail).to_contain_text(short("street"))

            # the token stays out of reach of any script, and the cookie is not sent cross-site
            assert await page.evaluate("document.cookie") == ""
            (cookie,) = await context.cookies()
            assert (cookie["name"], cookie["httpOnly"], cookie["sameSite"]) == (
                "gw_token", True, "Strict",
            )  # fmt: skip
            assert await page.evaluate("window.__pwned") is None
        finally:
            await browser.close()
    assert dialogs == [] and planted == []
    # nothing even tried: the page never handed the policy anything to block
    assert [m for m in console if "Content Security Policy" in m or "Trusted Type" in m] == []


async def test_a_revoked_operator_is_sent_back_to_the_login(site: Registry) -> None:
    from playwright.async_api import async_playwright, expect

    site.app[OPS].hub.recheck_s = 0.3  # the production period is 5 s
    crew = await issue(site.store, TokenRequest(name="late shift", role=Role.OPERATOR), SYSTEM)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{site.url}/dashboard#/alerts")
            await page.fill("#token", crew.token)
            await page.click("#login-form button[type=submit]")
            await expect(page.locator("#live")).to_have_text("live")
            status, _ = await site.call("DELETE", f"/api/v1/tokens/{crew.id}", Role.ADMIN)
            assert status == 200
            # the stream ends, its reconnection is refused, and the page asks for a login
            await expect(page.locator("#login")).to_be_visible(timeout=10_000)
            await expect(page.locator("#live")).to_have_text("offline")
        finally:
            await browser.close()


HOSTILE_ADDRESS = "<img src=x onerror=window.pwned=1>:502"


async def test_health_shows_one_card_per_root_cause_with_its_devices(
    tmp_path: Path, artifacts: Path
) -> None:
    """A gateway offline and a bus down are one card each with their devices inside, not a
    card per device; the summary counts devices and gateways apart."""
    from playwright.async_api import async_playwright, expect

    now = now_ms()
    dead = Birth(gateway="gw1", session=1, ts=now, devices=["a1", "a2", "a3"])
    live = Birth(gateway="gw2", session=1, ts=now, devices=["b1", "b2"])
    report = GatewayHealth(id=new_id(), gateway="gw2", seq=1, session=1, ts=now, interval_s=30,
                           devices=[DeviceHealth(device=d, online=False, reads_ok=9,
                                                 reads_failed=4, consecutive_failures=4)
                                    for d in ("b1", "b2")],
                           buses=[BusHealth(bus="cabinet", type="modbus_tcp",
                                            address=HOSTILE_ADDRESS, up=False,
                                            error="cabinet (192.0.2.10:502) unreachable",
                                            down_since=now - 60_000, devices=["b1", "b2"])])  # fmt: skip
    async with registry(tmp_path) as reg:
        await reg.store.apply(Changes(now=now, status=[dead, live], health=[report]))
        await reg.store.apply(Changes(now=now, status=[Death(gateway="gw1", session=1)]))
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            try:
                page = await browser.new_page(viewport={"width": 390, "height": 844})
                await page.goto(f"{reg.url}/dashboard")
                await page.fill("#token", reg.tokens[Role.MAINTENANCE])
                await page.click("#login-form button[type=submit]")
                gw = page.locator('[data-problem="gw1"]')
                await expect(gw).to_contain_text("gateway gw1 offline (death message): its 3 "
                                                 "devices are stale")  # fmt: skip
                await expect(gw.locator("li[data-member]")).to_have_count(3)
                bus = page.locator('[data-problem="gw2/cabinet"]')
                await expect(bus).to_contain_text(f"bus cabinet ({HOSTILE_ADDRESS}) on gateway gw2 "
                                                  "unreachable")  # fmt: skip
                await expect(bus.locator("li[data-member]")).to_have_count(2)
                await expect(page.locator("#health-list article")).to_have_count(2)
                await expect(page.locator("#health-summary")).to_have_text(
                    "2 problems · 5 of 5 devices unhealthy · 1 of 2 gateways unhealthy"
                )
                # the address the gateway reports is shown as text and runs nothing
                assert await page.evaluate("window.pwned") is None
                await page.screenshot(path=str(artifacts / "dashboard-health-groups.png"),
                                      full_page=True)  # fmt: skip
            finally:
                await browser.close()
