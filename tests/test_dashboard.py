"""The dashboard in a real browser (Debian's Chromium driven by Playwright), at desktop and phone
sizes: a crew sees the unhealthy devices first with why; an operator acknowledges an alert and its
state changes; a new alert appears live (SSE) without a reload; the device detail charts its
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
            # the catalogue's words beside the code, and the value at the point's decimals
            await expect(card).to_contain_text("烟感火警")
            await expect(card).to_contain_text("消防救援机构")
            await expect(card.locator(".reading")).to_have_text("Smoke detected: 5.20 %/m")
            await expect(page.locator("#alerts-title")).to_have_text(
                "Open work: 1 alert in 1 incident"
            )
            await card.locator("input").fill("crew on the way")
            await card.locator('button[data-act="ack"]').click()
            await expect(card.locator(".badge.stage")).to_have_text("acknowledged")
            await expect(card).to_contain_text("acknowledged by operator-1")
            await expect(card).to_contain_text("“crew on the way”")
            # the detector still sees smoke: no resolve, and the card says why
            await expect(card.locator('button[data-act="resolve"]')).to_have_count(0)
            await expect(card.locator(".still")).to_contain_text("Sensor still reports it")
            await expect(page.locator("#live")).to_have_text("live")

            # a new alert arrives at the centre: the page shows it without a reload
            await site.ingest(smoke("a2", device="sd-002", gateway="gw1", grid="FT-0050"))
            await expect(page.locator('[data-alert="a2"] .badge.stage')).to_have_text("open")
            # a second detector in a1's grid cell within the minute: one incident of two alerts
            await site.ingest(smoke("a3", device="sd-003", gateway="gw1"))
            incident = page.locator("section.incident").filter(has=card)
            await expect(incident.locator(".badge.incident")).to_have_text("incident of 2")
            await expect(incident.locator('button[data-inc-act="ack"]')).to_have_text(
                "Acknowledge all"
            )
            assert await page.evaluate("document.documentElement.scrollWidth") <= width
            await page.screenshot(path=str(artifacts / f"dashboard-alerts-{size}.png"),
                                  full_page=True)  # fmt: skip

            # device detail: identity, location, health and a chart of recent readings
            await card.locator("a").first.click()
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
    """An operator types a note while an alert burst arrives live: the note, its focus and its
    caret survive every refresh. The incident's buttons act on all its alerts; what the API
    refuses (a detector that still sees smoke) is said in the incident, in words. Filters narrow
    the list, and cleared and resolved alerts are closed with one button (and a second tap)."""
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

            # the burst: eight alerts in other cells and another district, each a live refresh
            for n in range(8):
                district = "luohu" if n % 2 else "futian"
                await site.ingest(smoke(f"b{n}", device=f"sd-1{n}", district=district,
                                        grid=f"G-{n}"))  # fmt: skip
                await expect(page.locator(f'[data-alert="b{n}"]')).to_have_count(1)
            await expect(page.locator("#alerts-title")).to_have_text(
                "Open work: 9 alerts in 9 incidents"
            )
            await expect(note).to_have_value("crew 12 at the")
            assert await page.evaluate("document.activeElement.dataset.key") == "alert:a1"
            await page.keyboard.type(" pump")  # typing goes on where it was
            await expect(note).to_have_value("crew 12 at the pump")

            # a second detector in a1's cell: one incident; its buttons act on both alerts
            await site.ingest(smoke("a3", device="sd-003"))
            incident = page.locator("section.incident").filter(has=a1)
            await expect(incident.locator(".badge.incident")).to_have_text("incident of 2")
            await expect(note).to_have_value("crew 12 at the pump")  # moved into the incident
            await incident.locator(".incident-head input.note").fill("brigade called")
            await incident.locator('button[data-inc-act="ack"]').click()
            await expect(incident.locator(".incident-head .msg")).to_have_text("2 acknowledged.")
            await expect(a1.locator(".badge.stage")).to_have_text("acknowledged")
            await expect(a1).to_contain_text("“brigade called”")

            # a1's detector clears, a3's still sees smoke: resolving the incident moves a1 only,
            # and says why a3 stays
            await site.ingest(smoke("a1", state=AlertState.CLEARED))
            await expect(a1.locator(".badge.stage")).to_have_text("cleared")
            await incident.locator('button[data-inc-act="resolve"]').click()
            said = incident.locator(".incident-head .msg")
            await expect(said).to_contain_text("1 resolved. 1 not resolved: a3: This alert cannot "
                                               "be resolved yet: the sensor still reports Smoke "
                                               "detected (obscuration 5.2 %/m, threshold 4).")  # fmt: skip
            await page.screenshot(path=str(artifacts / "dashboard-incident-desktop.png"),
                                  full_page=True)  # fmt: skip

            # the filters: what is listed, and the heading says it
            await page.select_option("#f-district", "luohu")
            await expect(page.locator("#alerts-title")).to_have_text(
                "Open work: 4 alerts in 4 incidents (luohu)"
            )
            await expect(page.locator("#alerts-list article[data-alert]")).to_have_count(4)
            await page.select_option("#f-district", "")
            await page.select_option("#f-stage", "done")
            await expect(page.locator("#alerts-title")).to_have_text(
                "Cleared and resolved, to close: 1 alert in 1 incident"
            )
            # a3, still burning, is shown beside it: an incident is listed whole
            await expect(page.locator('[data-alert="a3"]')).to_have_class(re.compile("context"))
            # the resolved card says who resolved it, when, and the note
            await expect(a1.locator(".who-resolved")).to_have_text(
                re.compile(r"^resolved by operator-1 \d+ s ago")
            )
            # many at once: one button, a second tap confirms, no pop-up
            close = page.locator("#close-done")
            await expect(close).to_have_text("Close 1 cleared and resolved")
            await close.click()
            await expect(close).to_have_text("Tap again to close 1 alerts")
            await close.click()
            await expect(page.locator("#alerts-msg")).to_have_text("Closed 1 alert.")
            await expect(a1).to_have_count(0)
            await expect(close).to_be_hidden()
        finally:
            await browser.close()
    _, closed = await site.call("GET", "/api/v1/alerts/a1", Role.ADMIN)
    assert closed["stage"] == "closed"


async def test_a_refused_resolve_is_said_in_the_card(site: Registry) -> None:
    """The sensor raises the alert again between the page's refresh and the operator's tap: the
    API refuses, and the card says why in words (no pop-up), then shows the alert as it is."""
    from playwright.async_api import Dialog, Route, async_playwright, expect

    dialogs: list[str] = []

    async def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    async def no_stream(route: Route) -> None:
        await route.abort()  # no live refresh: the page cannot know before the tap

    await site.ingest(smoke("a1", state=AlertState.CLEARED))
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 390, "height": 844})
            page.on("dialog", dismiss)
            await page.route("**/api/v1/alerts/stream", no_stream)
            await _log_in(page, site.url, site.tokens[Role.OPERATOR], "#/alerts")
            await page.select_option("#f-stage", "done")
            a1 = page.locator('[data-alert="a1"]')
            await expect(a1.locator('button[data-act="resolve"]')).to_be_visible()
            await site.ingest(smoke("a1"))  # smoke again
            await a1.locator('button[data-act="resolve"]').click()
            await expect(a1.locator(".msg")).to_contain_text(
                "This alert cannot be resolved yet: the sensor still reports Smoke detected"
            )
            await expect(a1.locator(".still")).to_have_text(
                "Sensor reports it again: resolve or close once it clears. If the sensor is "
                "broken or gone, resolve anyway and say why."
            )
            await expect(a1.locator('button[data-act="resolve"]')).to_have_count(0)
        finally:
            await browser.close()
    assert dialogs == []


async def test_a_broken_sensor_is_resolved_anyway_with_a_reason(
    site: Registry, artifacts: Path
) -> None:
    """The detector the flood destroyed reports smoke for ever: the card offers the operator
    "Resolve anyway…", asks for the reason in the card (no pop-up), refuses to send without one,
    and sends the override with it; the alert leaves the open work, recorded as an override."""
    from playwright.async_api import Dialog, Request, async_playwright, expect

    dialogs: list[str] = []
    sent: list[Any] = []

    async def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    def posted(request: Request) -> None:
        if request.method == "POST" and "/api/v1/alerts/" in request.url:
            sent.append(request.post_data_json)

    why = "detector destroyed by the water, crew saw it"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.on("dialog", dismiss)
            page.on("request", posted)
            await _log_in(page, site.url, site.tokens[Role.OPERATOR], "#/alerts")
            a1 = page.locator('[data-alert="a1"]')
            await expect(a1.locator(".still")).to_have_text(
                "Sensor still reports it: resolve once it clears. If the sensor is broken or "
                "gone, resolve anyway and say why."
            )
            await a1.locator("button[data-anyway]").click()
            why_box = a1.locator("input.why")
            await expect(why_box).to_be_focused()
            await expect(a1.locator("button[data-anyway]")).to_have_count(0)
            go = a1.locator('button[data-act="resolve"][data-override]')
            await expect(go).to_have_text("Resolve against the sensor")
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
            await expect(a1).to_have_count(0)  # resolved: no longer open work
        finally:
            await browser.close()
    assert dialogs == []
    assert sent == [{"note": why, "override": True}]
    _, detail = await site.call("GET", "/api/v1/alerts/a1", Role.OPERATOR)
    assert (detail["stage"], detail["resolved_by"]) == ("resolved", "operator-1")
    assert [(s["action"], s["override"], s["note"]) for s in detail["actions"]] == [
        ("resolve", True, why),
    ]


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

    await site.ingest(*(smoke(f"c{n}", device=f"sd-2{n}", grid=f"C-{n}") for n in range(90)))
    await site.ingest(*(smoke(f"c{n}", device=f"sd-2{n}", grid=f"C-{n}", state=AlertState.CLEARED)
                        for n in range(80)))  # fmt: skip
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            page = await browser.new_page(viewport={"width": 390, "height": 844})

            def requested(request: Request) -> None:
                asked.append(urlsplit(request.url).path)

            page.on("request", requested)
            await _log_in(page, site.url, site.tokens[Role.MAINTENANCE], "#/alerts")
            await expect(page.locator("#alerts-title")).to_have_text(
                "Open work: 11 alerts in 11 incidents"
            )
            await expect(page.locator("#alerts-summary")).to_contain_text(
                "80 cleared or resolved, to close"
            )
            await expect(page.locator("#live")).to_have_text(re.compile(r"^updated \d"))
            assert await page.locator("button[data-act], button[data-inc-act]").count() == 0
            assert await page.locator("button[data-anyway]").count() == 0  # no override either
            assert await page.locator("input.note").count() == 0
            await expect(page.locator("#close-done")).to_be_hidden()
            assert "/api/v1/alerts/stream" not in asked
            # a refusal, had one happened, reads as a sentence for the crew
            words = await page.evaluate('said({status: 403}, "acknowledge this alert")')
            assert words == "Your role (maintenance) may not acknowledge this alert."
            assert await page.evaluate("document.documentElement.scrollWidth") <= 390
            height = await page.evaluate("document.documentElement.scrollHeight")
            await page.screenshot(path=str(artifacts / "dashboard-alerts-crew-phone.png"),
                                  full_page=True)  # fmt: skip
            # 11 open alerts of 91 not closed: the phone shows the open work, compactly
            assert height < 11 * 200, height
            await expect(page.locator("#live")).not_to_have_text("reconnecting")

            # without a stream, the clock brings news: a new alert shows within a poll
            await site.ingest(smoke("late", device="sd-999", grid="L-1"))
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
    second = smoke("a2", grid="FT-0099").model_copy(update={
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
        # an admin may name a token anything: the name shows as "acknowledged by ..."
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
            await alert.locator('button[data-act="ack"]').click()
            await expect(alert.locator(".badge.stage")).to_have_text("acknowledged")
            await expect(alert).to_contain_text(f"acknowledged by {name}")
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
