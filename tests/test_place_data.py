"""The district's places as data: Xuhui's shipped file (13 streets and towns, grid cells with
area classes), what a places file may not say, the one place resolution (district and 街道
names, grid cell, area class) in tables and through the device API, and GCJ-02 -> WGS-84."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from device_registry.inventory.places import Place, PlaceName, resolve_place
from firmware_configs import PLACES
from gridwatch.ground.contract import Location
from gridwatch.ground.geo import wgs84_to_gcj02
from gridwatch.ground.places import load_places, shipped_places
from gridwatch.ground.shipped import firmware
from gridwatch.ground.yamlconf import ConfigError
from gridwatch.top import configcheck
from tests.test_components import Api, api, device

__all__ = ["api"]  # the fixture, shared with test_components

XUHUI_STREETS = {
    "310104003": "天平路街道", "310104004": "湖南路街道", "310104007": "斜土路街道",
    "310104008": "枫林路街道", "310104010": "长桥街道", "310104011": "田林街道",
    "310104012": "虹梅路街道", "310104013": "康健新村街道", "310104014": "徐家汇街道",
    "310104015": "凌云路街道", "310104016": "龙华街道", "310104017": "漕河泾街道",
    "310104103": "华泾镇",
}  # fmt: skip
"""GitHub Vonng/adcode data/adcode/310104.csv (shared/domain-facts.md §6), written out here."""


def test_xuhui_ships_its_12_streets_and_1_town_with_grid_cells() -> None:
    xuhui = shipped_places()["310104"]
    assert (xuhui.district.zh, xuhui.district.en) == ("徐汇区", "Xuhui District")
    assert {s.code: s.zh for s in xuhui.streets} == XUHUI_STREETS
    assert [s.zh for s in xuhui.streets if s.kind == "town"] == ["华泾镇"]
    assert xuhui.grid_format.length == 15 and "unconfirmed" in xuhui.grid_format.standard
    for kind in ("en", "grid_format", "grid_cells"):  # the file says what is not confirmed
        assert any(w in xuhui.sources[kind] for w in ("UNCONFIRMED", "ILLUSTRATIVE")), kind
    cells = {c.code: c for c in xuhui.grid_cells}
    assert {c.area_class for c in cells.values()} == {"A", "B", "C"}
    roads = {road for c in cells.values() for road in c.roads}
    assert {"漕溪北路", "肇嘉浜路", "虹桥路", "天钥桥路", "衡山路", "华山路", "龙吴路"} <= roads
    for code in cells:  # 6 district + 3 street + 3 community + 3 serial
        assert code[:9] in XUHUI_STREETS and len(code) == 15, code


GOOD = """\
places:
  district: {code: "310104", zh: 徐汇区, en: Xuhui District}
  sources: {codes: test}
  grid_format: {standard: test}
  streets:
    - {code: "310104003", zh: 天平路街道, en: Tianpinglu Jiedao}
  grid_cells:
    - {code: "310104003019001", area_class: A}
"""


@pytest.mark.parametrize(("change", "words"), [
    (("310104003019001", "31010400301900"), "has 14 digits; grid_format makes 15"),
    (("310104003019001", "310104004019001"), "grid cell 310104004019001 is in no street"),
    (('code: "310104003"', 'code: "310105003"'), "street 310105003 is not in district 310104"),
    (("area_class: A", "area_class: D"), "'A', 'B' or 'C'"),
    (("{standard: test}", "{district: 4, standard: test}"), "grid_format.district is 4 digits"),
    (('  grid_cells:\n', '    - {code: "310104003", zh: 天平, en: T}\n  grid_cells:\n'),
     "street code listed twice: 310104003"),
])  # fmt: skip
def test_a_places_file_that_contradicts_itself_is_refused_with_file_and_line(
    tmp_path: Path, change: tuple[str, str], words: str
) -> None:
    (tmp_path / "ok.yaml").write_text(GOOD, encoding="utf-8")
    assert list(load_places(tmp_path)) == ["310104"]
    (tmp_path / "ok.yaml").write_text(GOOD.replace(*change), encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_places(tmp_path)
    assert words in str(err.value) and "ok.yaml:" in str(err.value), err.value


XUHUI = PlaceName(code="310104", zh="徐汇区", en="Xuhui District")
XUJIAHUI = PlaceName(code="310104014", zh="徐家汇街道", en="Xujiahui Jiedao")
HUAJING = PlaceName(code="310104103", zh="华泾镇", en="Huajing Zhen")

LOCATIONS: list[tuple[dict[str, Any], Place]] = [
    # a listed grid cell: its street from the code, its area class from the file
    ({"district": "310104", "street": "漕溪北路", "grid": "310104014024001"},
     Place(district=XUHUI, street=XUJIAHUI, road="漕溪北路", grid="310104014024001",
           area_class="A")),
    ({"district": "310104", "grid": "310104103005001"},
     Place(district=XUHUI, street=HUAJING, grid="310104103005001", area_class="C")),
    # a cell of the format the file does not list: its street still, the default class
    ({"district": "310104", "grid": "310104014024999"},
     Place(district=XUHUI, street=XUJIAHUI, grid="310104014024999", area_class="B")),
    # no grid cell: the 街道 named by code or Chinese name
    ({"district": "310104", "street": "310104014"},
     Place(district=XUHUI, street=XUJIAHUI, area_class="B")),
    ({"district": "310104", "street": "华泾镇"},
     Place(district=XUHUI, street=HUAJING, area_class="B")),
    # a grid cell of another format: a name only
    ({"district": "310104", "street": "虹桥路", "grid": "XH-0042"},
     Place(district=XUHUI, street=None, road="虹桥路", grid="XH-0042", area_class="B")),
    # a district without a places file: its code, no names, the default class
    ({"district": "310105", "grid": "310105001001001"},
     Place(district=PlaceName(code="310105"), street=None, grid="310105001001001",
           area_class="B")),
    ({}, Place(district=None, street=None, area_class="B")),
]  # fmt: skip


@pytest.mark.parametrize(("loc", "expected"), LOCATIONS)
def test_a_location_resolves_to_district_street_grid_and_area_class(
    loc: dict[str, Any], expected: Place
) -> None:
    assert resolve_place(Location(**loc)) == expected


async def test_the_device_api_shows_the_resolved_place(api: Api) -> None:
    where = {"district": "310104", "street": "肇嘉浜路", "grid": "310104003019001"}
    made = await api.call("POST", "/api/v1/devices", device("wl-1", 1, location=where), 201)
    shown = await api.call("GET", "/api/v1/devices/gw1:wl-1")
    for view in (made, shown):
        assert view["place"] == {
            "district": {"code": "310104", "zh": "徐汇区", "en": "Xuhui District"},
            "street": {"code": "310104003", "zh": "天平路街道", "en": "Tianpinglu Jiedao"},
            "road": "肇嘉浜路", "grid": "310104003019001", "area_class": "A",
        }, view  # fmt: skip
    [listed] = await api.call("GET", "/api/v1/devices")
    assert listed["place"]["area_class"] == "A"


def _metres(a: tuple[float, float], b: tuple[float, float]) -> float:
    dx = (a[0] - b[0]) * 111_320 * math.cos(math.radians(a[1]))
    return math.hypot(dx, (a[1] - b[1]) * 110_540)


# (lon, lat) GCJ-02 as Amap gives them (shared/domain-facts.md §6)
CENTROIDS = [(121.445796, 31.191316), (121.456202, 31.117411), (121.438794, 31.202978)]


@pytest.mark.parametrize("gcj", CENTROIDS)
def test_gcj02_centroids_become_wgs84_half_a_kilometre_away(gcj: tuple[float, float]) -> None:
    # (the transform itself, both ways, is tests/test_geo.py's)
    [street] = [s for s in shipped_places()["310104"].streets if s.centroid_gcj02 == gcj]
    wgs = street.centroid_wgs84
    assert wgs is not None
    # GCJ-02 moves Shanghai east-north-east by about 480 m: a crew sent to the raw Amap
    # point on a WGS-84 map would be a street away
    assert 400 < _metres(gcj, wgs) < 600, _metres(gcj, wgs)
    assert wgs[0] < gcj[0] and wgs[1] > gcj[1]
    lat, lon = wgs84_to_gcj02(wgs[1], wgs[0])
    assert _metres((lon, lat), gcj) < 0.01  # back where Amap put it (1 cm)


def test_config_check_vouches_for_the_shipped_places_and_names_a_bad_line(tmp_path: Path) -> None:
    assert configcheck.check(firmware(PLACES) / "xuhui.yaml") == []
    bad = tmp_path / "xuhui.yaml"
    bad.write_text(GOOD.replace("area_class: A", "area_class: D"), encoding="utf-8")
    [problem] = configcheck.check(bad)
    assert problem.startswith(f"{bad}:8:") and "area_class" in problem, problem
