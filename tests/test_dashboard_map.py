"""The dashboard in Chinese and English, with its map, in a real browser (Debian's Chromium driven
by Playwright) at a phone's size (390x844) and a desktop's (1280x800).

A Xuhui crew's browser asks for Chinese (or for nothing we have) and gets it: ``<html lang>``,
the page's own words, the map's legend and its markers' words; the header's button switches to
English and the page remembers it. The map draws the district without any tile server: grid cells
as boxes around their devices, every device with a position as a marker, coloured AND said in
words (a crew reads a phone in the sun). Screenshots go to test-artifacts/."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from device_registry import Changes
from device_registry.db.tables import Device
from device_registry.http.auth import Role
from device_registry.http.dashboard import (
    CELL_PAD_M,
    MapDevice,
    Tiles,
    cells,
    csp,
    placed,
    tiles_from,
)
from gridwatch.ground.contract import (
    AlertEvent,
    Birth,
    DeviceHealth,
    DeviceInfo,
    GatewayHealth,
    Location,
    Reading,
    new_id,
)
from tests._ops_helpers import Registry, now_ms, ponding, registry
from tests.test_dashboard import CHROMIUM, FLAGS, SIZES, pytestmark  # noqa: F401

DISTRICT = "310104"
# (device, street, grid cell, WGS-84 lat, lon): real Xuhui roads; positions near them
PLACES = [
    ("wl-001", "漕溪北路", "310104003001001", 31.19180, 121.43650),  # storm-water manhole
    ("wl-002", "漕溪北路", "310104003001001", 31.19060, 121.43700),
    ("sd-001", "肇嘉浜路", "310104003002004", 31.19560, 121.44810),
    ("sd-002", "虹桥路", "310104011001002", 31.19420, 121.42900),
]
UNPLACED = "sd-009"  # registered without a position: not on the map, and the page says so


def ponding_at(alert_id: str, device: str, lat: float, lon: float) -> AlertEvent:
    """Road waterlogging (0406) at a device's position (the map places it by the device's row)."""
    here = Location(district=DISTRICT, street="漕溪北路", grid=PLACES[0][2], lat=lat, lon=lon)
    return ponding(alert_id, device=device).model_copy(update={"location": here})


async def seed(reg: Registry) -> None:
    now = now_ms()
    names = [p[0] for p in PLACES] + [UNPLACED]
    where = {p[0]: Location(district=DISTRICT, street=p[1], grid=p[2]) for p in PLACES}
    where[UNPLACED] = Location(district=DISTRICT, street="天钥桥路", grid="310104005001003")
    birth = Birth(gateway="gw1", session=1, ts=now, devices=names, device_info=[
        DeviceInfo(device=n, profile="water-level-ultrasonic", interval_s=3600, location=where[n])
        for n in names
    ])  # fmt: skip
    readings = [Reading(device=n, point="level", value=0.2, unit="m", ts=now) for n in names]
    health = GatewayHealth(id=new_id(), gateway="gw1", seq=1, session=1, ts=now, devices=[
        DeviceHealth(device="sd-001", online=False, reads_ok=10, reads_failed=5,
                     consecutive_failures=5, last_ok=now - 30_000),
    ])  # fmt: skip
    ch = Changes(now=now, status=[birth], health=[health])
    for r in readings:
        ch.latest[("gw1", r.device, r.point)] = r
        ch.device_seen[("gw1", r.device)] = r.ts
    await reg.store.apply(ch)
    # the installer's positions (registration sets them; the store is quicker here)
    async with reg.store.transaction() as s:
        for name, _street, _grid, lat, lon in PLACES:
            row = await s.get(Device, f"gw1:{name}")
            assert row is not None
            row.lat, row.lon = lat, lon
    await reg.ingest(ponding_at("p1", "wl-001", PLACES[0][3], PLACES[0][4]))


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[Registry]:
    async with registry(tmp_path) as reg:
        await seed(reg)
        yield reg


# the page's own words (not the data: ids, codes, gateways' messages, the catalogue's names in the
# category filter) in the chrome a person reads: anything English left here in the Chinese page is untranslated
CHROME = (
    "header, main h2, .summary, #f-stage, #f-severity, button, .badge, .legend, #map-note, "
    ".timeleft"
)
DATA = re.compile(r"gridwatch|English|WGS-84|gw1|[a-z]+-\d+|\d+")


async def untranslated(page: Any) -> list[str]:
    texts: list[str] = await page.eval_on_selector_all(
        CHROME, "els => els.filter(e => e.offsetParent).map(e => e.innerText)"
    )
    return sorted({w for t in texts for w in re.findall(r"[A-Za-z]{3,}", DATA.sub(" ", t))})


async def log_in(page: Any, url: str, token: str, where: str = "") -> None:
    await page.goto(f"{url}/dashboard{where}")
    await page.fill("#token", token)
    await page.click("#login-form button[type=submit]")


WORDS: Mapping[str, Mapping[str, str]] = {
    "zh-CN": {"nav": "运维", "offline": "离线", "major": "重要 · 上报", "legend": "单元网格",
              "cases": "案件", "note": "台设备没有位置", "position": "坐标（WGS-84）"},
    "en": {"nav": "Maintenance", "offline": "offline", "major": "major · reported",
           "legend": "grid cell", "cases": "Cases", "note": "device has no position",
           "position": "Position (WGS-84)"},
}  # fmt: skip


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("lang", ["zh-CN", "en"])
async def test_the_map_in_both_languages(
    site: Registry, lang: str, size: str, artifacts: Path
) -> None:
    from playwright.async_api import ConsoleMessage, async_playwright, expect

    width, height = SIZES[size]
    words = WORDS[lang]
    errors: list[str] = []

    def logged(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            # the browser asks for its language (Accept-Language), as a crew's phone does
            context = await browser.new_context(viewport={"width": width, "height": height},
                                                locale=lang)  # fmt: skip
            page = await context.new_page()
            page.on("console", logged)
            await log_in(page, site.url, site.tokens[Role.OPERATOR])  # sees the buttons too
            assert await page.evaluate("document.documentElement.lang") == lang
            await expect(page.locator("#nav-health")).to_have_text(words["nav"])

            # the crew's map: four devices placed, cells drawn without tiles, words on markers
            box = page.locator("#map-box")
            await expect(box.locator(".pin")).to_have_count(4)
            await expect(box.locator("path.cell")).to_have_count(3)
            await expect(box.locator(".cell-name").first).to_have_text(PLACES[0][2])
            await expect(box.locator('[data-pin="gw1:sd-001"] .words')).to_have_text(
                words["offline"]
            )
            case = box.locator('[data-pin="gw1:wl-001"]')
            await expect(case.locator(".words")).to_have_text(words["major"])
            await expect(case).to_have_class(re.compile(r"\bwarn\b"))
            await expect(box.locator('[data-pin="gw1:sd-002"] .words')).to_have_count(0)
            await expect(box.locator(".legend")).to_contain_text(words["legend"])
            await expect(box.locator("#map-note")).to_contain_text(words["note"])
            assert await page.evaluate("document.documentElement.scrollWidth") <= width
            if lang == "zh-CN":
                assert await untranslated(page) == []
            await page.screenshot(path=str(artifacts / f"map-health-{lang}-{size}.png"),
                                  full_page=True)  # fmt: skip

            # a marker opens what it stands for, with a way to the device
            await case.click()
            await expect(page.locator(".leaflet-popup .pop a")).to_have_text("wl-001")

            # the operator's list and map: the case on the map, in the same words
            await page.click("#nav-alerts")
            await expect(page.locator('[data-alert="p1"]')).to_be_visible()
            await expect(box.locator(".pin")).to_have_count(4)
            await expect(box.locator('[data-pin="gw1:wl-001"] .words')).to_have_text(words["major"])
            stage = await page.locator('[data-alert="p1"] .badge.stage').text_content() or "?"
            await expect(box.locator('[data-pin="gw1:wl-001"] .words')).to_contain_text(stage)
            assert await page.evaluate("document.documentElement.scrollWidth") <= width
            if lang == "zh-CN":
                assert await untranslated(page) == []
            await page.screenshot(path=str(artifacts / f"map-cases-{lang}-{size}.png"),
                                  full_page=True)  # fmt: skip

            # the device's page from its marker's popup: no map there, its position in words
            await box.locator('[data-pin="gw1:wl-001"]').click()
            await page.locator(".leaflet-popup .pop a").click()
            detail = page.locator("#device-detail")
            await expect(detail).to_contain_text(words["position"])
            await expect(detail).to_contain_text("31.191800, 121.436500")
            await expect(box).to_be_hidden()
            assert await page.evaluate("document.documentElement.scrollWidth") <= width
            if lang == "zh-CN":
                assert await untranslated(page) == []
            await page.screenshot(path=str(artifacts / f"device-{lang}-{size}.png"),
                                  full_page=True)  # fmt: skip
        finally:
            await browser.close()
    # the page asks the policy for nothing it refuses (Leaflet's own strings pass trusted.js)
    assert [e for e in errors if "Trusted Type" in e or "Content Security" in e] == []


async def test_the_language_button_switches_and_is_remembered(site: Registry) -> None:
    from playwright.async_api import async_playwright, expect

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            # a browser asking for French: nothing we have, so Chinese first
            context = await browser.new_context(locale="fr-FR")
            page = await context.new_page()
            await page.goto(f"{site.url}/dashboard")
            await expect(page.locator("#login h2")).to_have_text("登录")
            lang = page.locator("#lang")
            await expect(lang).to_have_text("English")
            await lang.click()
            await expect(page.locator("#login h2")).to_have_text("Log in")
            assert await page.evaluate("document.documentElement.lang") == "en"
            await expect(lang).to_have_text("中文")
            await page.fill("#token", site.tokens[Role.OPERATOR])
            await page.click("#login-form button[type=submit]")
            await expect(page.locator("#who")).to_have_text("operator-1 (operator)")
            # remembered across a reload
            await page.reload()
            await expect(page.locator("#nav-alerts")).to_have_text("Cases")
            # and back: the view already drawn is drawn again in Chinese, the map too
            await lang.click()
            await expect(page.locator("#nav-alerts")).to_have_text("案件")
            await expect(page.locator("#who")).to_have_text("operator-1 (值班员)")
            await expect(page.locator("#health-summary")).to_contain_text("台设备中")
            await expect(page.locator("#map-box .legend")).to_contain_text("单元网格")
            assert await page.evaluate("document.documentElement.lang") == "zh-CN"
        finally:
            await browser.close()


# ---- the map's data and settings: pure ----------------------------------------------------------


def test_devices_stand_at_their_own_position_else_their_sites() -> None:
    rows = [
        ("gw1:a", "gw1", "a", 31.19, 121.43, DISTRICT, "漕溪北路", "G1", 31.0, 121.0),
        ("gw1:b", "gw1", "b", None, None, DISTRICT, "漕溪北路", "G1", 31.2, 121.44),
        ("gw1:c", "gw1", "c", None, None, DISTRICT, "", "", None, None),
        ("gw1:d", "gw1", "d", None, None, None, "", "", None, None),  # nowhere at all
    ]
    devices, unplaced = placed(rows)
    assert [(d.id, d.lat, d.lon, d.own) for d in devices] == [
        ("gw1:a", 31.19, 121.43, True),
        ("gw1:b", 31.2, 121.44, False),
    ]
    assert unplaced == 2


def test_a_grid_cell_is_the_box_around_its_devices() -> None:
    at = [(31.19, 121.43, "G1"), (31.20, 121.44, "G1"), (31.10, 121.40, "G2"), (31.0, 121.0, "")]
    devices = [MapDevice(id=f"gw1:{i}", gateway="gw1", device=str(i), lat=lat, lon=lon, own=True,
                         district=DISTRICT, grid=grid)
               for i, (lat, lon, grid) in enumerate(at)]  # fmt: skip
    got = cells(devices)
    assert [(c.grid, c.devices) for c in got] == [("G1", 2), ("G2", 1)]  # none for no cell
    pad = CELL_PAD_M / 111_320
    assert got[0].south == pytest.approx(31.19 - pad) and got[0].north == pytest.approx(31.20 + pad)
    # a degree of longitude is shorter at 31 degrees north: the pad is wider in degrees
    assert got[0].east - 121.44 == pytest.approx(pad / 0.8556, rel=1e-3)
    assert got[1].south < 31.10 < got[1].north and got[1].west < 121.40 < got[1].east


@pytest.mark.parametrize(
    ("env", "tiles"),
    [
        ({}, None),  # the default: no tiles
        ({"GRIDWATCH_MAP_TILES": "  "}, None),
        (
            {"GRIDWATCH_MAP_TILES": "https://gis.example.gov.cn/tiles/{z}/{x}/{y}.png",
             "GRIDWATCH_MAP_ATTRIBUTION": "徐汇区测绘"},
            Tiles("https://gis.example.gov.cn/tiles/{z}/{x}/{y}.png",
                  "https://gis.example.gov.cn", "徐汇区测绘"),
        ),
        (
            {"GRIDWATCH_MAP_TILES": "http://10.1.2.3:8080/wmts/{z}/{y}/{x}"},
            Tiles("http://10.1.2.3:8080/wmts/{z}/{y}/{x}", "http://10.1.2.3:8080", ""),
        ),
        ({"GRIDWATCH_MAP_TILES": "https://gis.example.gov.cn/tiles/{z}/{x}.png"}, None),  # no {y}
        ({"GRIDWATCH_MAP_TILES": "javascript:alert(1)//{z}{x}{y}"}, None),
        ({"GRIDWATCH_MAP_TILES": "file:///srv/tiles/{z}/{x}/{y}.png"}, None),
    ],
)  # fmt: skip
def test_the_tile_server_comes_from_the_environment(
    env: dict[str, str], tiles: Tiles | None
) -> None:
    assert tiles_from(env) == tiles


def test_the_page_may_load_images_from_the_tile_server_only() -> None:
    assert "img-src 'self';" in csp(None)
    policy = csp(
        Tiles("https://gis.example.gov.cn/t/{z}/{x}/{y}.png", "https://gis.example.gov.cn", "")
    )
    assert "img-src 'self' https://gis.example.gov.cn;" in policy
    # one Trusted Types policy, the page's own (trusted.js), and scripts from here only
    assert "trusted-types default" in policy and "script-src 'self'" in policy


async def test_a_crew_sees_the_unhealthy_first_and_the_healthy_a_page_at_a_time(
    tmp_path: Path, artifacts: Path
) -> None:
    """250 devices, one not answering: the phone lists it first, then healthy ones, a page of
    100 at a time behind a button (a district has thousands; a phone that draws them all is
    slow). The registry pages them where it can (docs/health.md), else the page does."""
    from playwright.async_api import async_playwright, expect

    now = now_ms()
    names = [f"wl-{i:03d}" for i in range(250)]
    here = Location(district=DISTRICT, street="虹桥路", grid=PLACES[3][2])
    birth = Birth(gateway="gw1", session=1, ts=now, devices=names, device_info=[
        DeviceInfo(device=n, profile="water-level-ultrasonic", interval_s=3600, location=here)
        for n in names
    ])  # fmt: skip
    health = GatewayHealth(id=new_id(), gateway="gw1", seq=1, session=1, ts=now, devices=[
        DeviceHealth(device="wl-249", online=False, reads_ok=1, reads_failed=5,
                     consecutive_failures=5, last_ok=now - 30_000),
    ])  # fmt: skip
    async with registry(tmp_path) as reg, async_playwright() as pw:
        await reg.store.apply(Changes(now=now, status=[birth], health=[health]))
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = await browser.new_context(viewport={"width": 390, "height": 844},
                                                locale="zh-CN")  # fmt: skip
            page = await context.new_page()
            await log_in(page, reg.url, reg.tokens[Role.MAINTENANCE])
            cards = page.locator("#health-list article[data-device]")
            await expect(cards).to_have_count(100)
            await expect(cards.first).to_have_attribute("data-device", "gw1:wl-249")
            more = page.locator("#more-devices")
            await expect(more).to_have_text("再显示 100 台设备")
            await expect(page.locator("#health-list .more")).to_contain_text(
                "已列出 250 台设备中的 100 台"
            )
            await page.screenshot(path=str(artifacts / "crew-page-zh-CN-phone.png"))
            await more.click()
            await expect(cards).to_have_count(200)
            await expect(more).to_have_text("再显示 50 台设备")
            await more.click()
            await expect(cards).to_have_count(250)
            await expect(more).to_have_count(0)
            # no positions: the page says why there is no map instead of an empty one
            await expect(page.locator("#map-empty")).to_contain_text("还没有设备登记位置")
        finally:
            await browser.close()


# a 1x1 grey PNG: a tile, as far as Leaflet and the browser care
TILE = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108000000003a7e9b55"
    "0000000a49444154789c63b8070000810080e1e2a1a50000000049454e44ae426082"
)


async def test_the_city_gis_servers_tiles_are_laid_under_the_map(
    site: Registry, monkeypatch: pytest.MonkeyPatch, artifacts: Path
) -> None:
    """With GRIDWATCH_MAP_TILES the page loads the tiles from that server (another origin, which
    the page's policy then admits) under the same cells and markers, and says whose they are."""
    from aiohttp import web
    from playwright.async_api import ConsoleMessage, async_playwright, expect

    from device_registry.http.app import serving

    asked: list[str] = []

    async def tile(request: web.Request) -> web.Response:
        asked.append(request.path)
        return web.Response(body=TILE, content_type="image/png")

    gis = web.Application()
    gis.router.add_get("/tiles/{z}/{x}/{y}.png", tile)
    errors: list[str] = []

    def logged(msg: ConsoleMessage) -> None:
        if msg.type == "error":
            errors.append(msg.text)

    async with serving(gis, "127.0.0.1", 0) as gis_url, async_playwright() as pw:
        monkeypatch.setenv("GRIDWATCH_MAP_TILES", f"{gis_url}/tiles/{{z}}/{{x}}/{{y}}.png")
        monkeypatch.setenv("GRIDWATCH_MAP_ATTRIBUTION", "徐汇区城市网格化管理中心")
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            context = await browser.new_context(viewport={"width": 1280, "height": 800},
                                                locale="zh-CN")  # fmt: skip
            page = await context.new_page()
            page.on("console", logged)
            await log_in(page, site.url, site.tokens[Role.OPERATOR])
            box = page.locator("#map-box")
            await expect(box.locator("img.leaflet-tile-loaded").first).to_be_visible()
            await expect(box.locator(".pin")).to_have_count(4)
            await expect(box.locator("#map-note")).to_contain_text("底图：徐汇区城市网格化管理中心")
            await page.screenshot(path=str(artifacts / "map-tiles-zh-CN-desktop.png"))
        finally:
            await browser.close()
    assert asked and all(re.fullmatch(r"/tiles/\d+/\d+/\d+\.png", p) for p in asked)
    assert [e for e in errors if "Content Security" in e or "Trusted Type" in e] == []
