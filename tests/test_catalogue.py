"""The catalogue on the national classification: layers, limits by area class, what a district
may and may not do, and rules held to filing conditions. Pure: tables and temp folders."""

from __future__ import annotations

from pathlib import Path

import pytest

from gridwatch.ground.catalogue import (
    Category,
    Filing,
    default_catalogue_dir,
    filing_gaps,
    load_catalogue,
)
from gridwatch.ground.profiles import ModbusPoint, OfflineRule, RateRule, ThresholdRule
from gridwatch.ground.yamlconf import ConfigError
from gridwatch.top.cli import main as cli
from gridwatch.top.configcheck import check

SHIPPED = default_catalogue_dir()

ITEM = (
    "    - code: '{code}'\n"
    "      kind: {kind}\n"
    "      name: {{zh: 名{code}, en: Item {code}}}\n"
    "      severity: major\n"
    "      filing: {{zh: 立案, en: Filed by an operator}}\n"
    "      limits_min: {{A: 30, B: 60, C: 90}}\n"
    "      closure: {{zh: 结案, en: Closed}}\n"
    "      department: {{code: D1, zh: 部门, en: Department}}\n"
)


def city(*items: tuple[str, str]) -> str:
    head = (
        "catalogue:\n  layer: city\n  city: '310000'\n  extends: national.yaml\n"
        "  name: {zh: 市, en: City}\n  categories:\n"
    )
    return head + "".join(ITEM.format(code=c, kind=k) for c, k in items)


def district(body: str) -> str:
    return (
        "catalogue:\n  layer: district\n  district: '310104'\n  extends: city.yaml\n"
        "  name: {zh: 区, en: District}\n" + body
    )


def folder(tmp_path: Path, city_text: str, district_text: str | None = None) -> Path:
    (tmp_path / "national.yaml").write_text((SHIPPED / "national.yaml").read_text())
    (tmp_path / "city.yaml").write_text(city_text)
    if district_text is not None:
        (tmp_path / "district.yaml").write_text(district_text)
    return tmp_path


CITY = city(("0406", "event"), ("0103", "component"), ("2101", "event"))


@pytest.mark.parametrize(
    ("area_class", "minutes"),
    [("A", 30), ("B", 60), ("C", 90), ("a", 30), ("", 60), ("Z", 60)],  # unknown: "B"
)
def test_limit_by_area_class(tmp_path: Path, area_class: str, minutes: int) -> None:
    cat = load_catalogue(folder(tmp_path, CITY))
    item = cat.lookup("0406")
    assert item is not None and item.limit_min(area_class) == minutes


# (what, district layer body, expected problems: "file:line: key path: message")
DISTRICT_CASES = [
    (
        "tightens one area class and names its own department",
        "  overrides:\n    - {code: '0406', limits_min: {A: 20}, department: "
        "{code: X1, zh: 区排水, en: District drainage}}\n",
        [],
    ),
    (
        "adds an item on a national class and a local one",
        "  categories:\n"
        + ITEM.format(code="040611", kind="event")
        + ITEM.format(code="2301", kind="component"),
        [],
    ),
    (
        "loosens a limit",
        "  overrides:\n    - code: '0406'\n      limits_min: {B: 61}\n",
        [
            "district.yaml:8: catalogue -> overrides -> 0 -> limits_min -> B: loosens 0406 "
            "'名0406' in area class B from the city's 60 min: a district may only tighten "
            "(got 61)"
        ],
    ),
    (
        "redefines a city item",
        "  categories:\n" + ITEM.format(code="0406", kind="event"),
        [
            "district.yaml:7: catalogue -> categories -> 0 -> code: redefines city item 0406 "
            "'名0406': a district may add items and tighten limits (overrides), not redefine "
            "(got '0406')"
        ],
    ),
    (
        "overrides a code the city does not have",
        "  overrides:\n    - {code: '0499', limits_min: {A: 5}}\n",
        ["district.yaml:7: catalogue -> overrides -> 0 -> code: not a city item (got '0499')"],
    ),
    (
        "a class the national layer has only as the other kind",
        "  categories:\n" + ITEM.format(code="0406", kind="component").replace("0406", "040699"),
        [
            "district.yaml:7: catalogue -> categories -> 0 -> code: 0406 is no national component "
            "class; the national layer has it as event class (got '040699')"
        ],
    ),
    (
        "a class that does not exist",
        "  categories:\n" + ITEM.format(code="0998", kind="event"),
        [
            "district.yaml:7: catalogue -> categories -> 0 -> code: 0998 is no national event "
            "class; local extensions use majors from 21 (got '0998')"
        ],
    ),
    (
        "the same code twice",
        "  categories:\n" + ITEM.format(code="2301", kind="event") * 2,
        [
            "district.yaml:15: catalogue -> categories -> 1 -> code: code repeated (item 0 has "
            "it): alerts name one item by its code; give one a detail code (got '2301')"
        ],
    ),
    (
        "a code of the wrong shape",
        "  categories:\n" + ITEM.format(code="406", kind="event"),
        [
            "district.yaml:7: catalogue -> categories -> 0 -> code: String should match pattern "
            "'^(0[1-9]|[1-9][0-9])(0[1-9]|[1-9][0-9])([0-9]{2}){0,2}$' (got '406')"
        ],
    ),
    (
        "extends a file that is not the city layer",
        "  categories: []\n",
        ["district.yaml:4: catalogue -> extends: the layer below is city.yaml (got 'base.yaml')"],
    ),
]


@pytest.mark.parametrize(("what", "body", "expected"), DISTRICT_CASES)
def test_what_a_district_layer_may_do(
    tmp_path: Path, what: str, body: str, expected: list[str]
) -> None:
    text = district(body)
    if "extends a file" in what:
        text = text.replace("extends: city.yaml", "extends: base.yaml")
    root = folder(tmp_path, CITY, text)
    got: list[str] = []
    try:
        load_catalogue(root)
    except ConfigError as exc:
        got = [str(p).removeprefix(f"{root}/") for p in exc.problems]
    assert got == expected, what
    # `config check` on the layer reports the same, file:line: key
    assert check(root / "district.yaml") == [f"{root}/{e}" for e in expected], what


def test_a_district_layer_checked_alone_is_judged_against_the_shipped_layers(
    tmp_path: Path,
) -> None:
    """An installer checks a district file before it is installed: its folder holds only it."""
    layer = tmp_path / "district-x.yaml"
    text = district("  overrides:\n    - {code: '0406', limits_min: {B: 999}}\n")
    layer.write_text(text.replace("city.yaml", "city-shanghai.yaml"))
    assert check(layer) == [
        f"{layer}:7: catalogue -> overrides -> 0 -> limits_min -> B: loosens 0406 '道路积水' in "
        "area class B from the city's 60 min: a district may only tighten (got 999)"
    ]


def test_component_and_event_classes_share_digits_items_do_not(tmp_path: Path) -> None:
    """National 0401 is a heritage tree (component) and a road collapse (event); an item code
    names one item, since alerts carry only the code."""
    cat = load_catalogue(folder(tmp_path, city(("0401", "event"), ("040101", "component"))))
    assert cat.class_name("component", "0401").zh == "古树名木"  # type: ignore[union-attr]
    assert cat.class_name("event", "0401").zh == "路面塌陷"  # type: ignore[union-attr]
    assert cat.lookup("040101").class_code == "0401"  # type: ignore[union-attr]
    assert cat.class_name("event", "2101") is None
    with pytest.raises(ConfigError, match="code repeated"):
        load_catalogue(folder(tmp_path, city(("0401", "event"), ("0401", "component"))))


def test_a_layer_set_needs_one_national_and_one_city_layer(tmp_path: Path) -> None:
    (tmp_path / "city.yaml").write_text(CITY)
    with pytest.raises(ConfigError, match=r"needs exactly one national layer \(found: none\)"):
        load_catalogue(tmp_path)


# ---- the filing condition, its model and the rules held to it --------------------------------

FILING_BAD = [
    ({"auto": False, "point": "x", "above": 1}, "the automatic part: set 'auto'"),
    ({"auto": True, "above": 1}, "needs the 'point' it is read on"),
    ({"auto": True, "point": "x"}, "'point' needs 'above' or 'below'"),
    ({"auto": True, "for_s": -1}, "greater than or equal to 0"),
]


@pytest.mark.parametrize(("fields", "message"), FILING_BAD)
def test_a_filing_condition_says_what_is_missing(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Filing.model_validate({"zh": "立案", "en": "Filed", **fields})


PONDING = Category.model_validate(
    {
        "code": "0406", "kind": "event", "name": {"zh": "道路积水", "en": "Road waterlogging"},
        "severity": "major", "limits_min": {"A": 30, "B": 60, "C": 90},
        "filing": {"zh": "积水15厘米持续5分钟", "en": "15 cm for 5 min", "auto": True,
                   "point": "water_depth", "above": 0.15, "unit": "m", "for_s": 300},
        "closure": {"zh": "退水", "en": "Gone", "verify_window_s": 1800},
        "department": {"code": "PS", "zh": "排水", "en": "Drainage"},
    }
)  # fmt: skip
DEPTH_M = {"water_depth": ModbusPoint(table="holding", address=0, data_type="int16", unit="m")}
DEPTH_CM = {"water_depth": ModbusPoint(table="holding", address=0, data_type="int16", unit="cm")}


def threshold(**kw: object) -> ThresholdRule:
    fields = {"kind": "threshold", "id": "r", "point": "water_depth", "category": "0406", **kw}
    return ThresholdRule.model_validate(fields)


HEAD = "0406 '道路积水' is filed by the centre when water_depth"
# (what, rule, points, interval_s, expected (key, message, value))
GAPS = [
    ("at the line, no wait", threshold(above=0.15), DEPTH_M, 5, []),
    ("inside the line, waiting 2 samples of 5 s", threshold(above=0.1, debounce_samples=2),
     DEPTH_M, 5, []),
    ("further out: 15-20 cm never filed", threshold(above=0.2), DEPTH_M, 5,
     [("above", f"{HEAD} is over 0.15: a rule raising only further out leaves values between "
       "them unfiled", 0.2)]),
    ("a low line only", threshold(below=0.0), DEPTH_M, 5,
     [("above", f"{HEAD} is over 0.15: a rule raising only further out leaves values between "
       "them unfiled", None)]),
    ("waits longer than the filing duration", threshold(above=0.15, debounce_s=400), DEPTH_M, 5,
     [("debounce_s", f"{HEAD} has held for 300 s; this rule waits 400 s before it raises",
       400.0)]),
    ("61 samples of 5 s = 300 s: just in time", threshold(above=0.15, debounce_samples=61),
     DEPTH_M, 5, []),
    ("62 samples of 5 s", threshold(above=0.15, debounce_samples=62), DEPTH_M, 5,
     [("debounce_samples", f"{HEAD} has held for 300 s; this rule waits 305 s before it raises",
       305.0)]),
    ("a point in centimetres", threshold(above=0.15), DEPTH_CM, 5,
     [("point", f"{HEAD} is in m; the profile's water_depth is in cm", "cm")]),
    ("another point", threshold(point="level", above=0.15), DEPTH_M, 5,
     [("point", f"{HEAD} crosses the line; this rule watches another point", "level")]),
    ("a rate rule cannot catch a line",
     RateRule(kind="rate_of_change", id="r", point="water_depth", rise=0.1, window_s=60,
              category="0406"), DEPTH_M, 5,
     [("kind", f"{HEAD} crosses a line: only a threshold rule can catch that",
       "rate_of_change")]),
]  # fmt: skip


@pytest.mark.parametrize(("what", "rule", "points", "interval_s", "expected"), GAPS)
def test_a_rule_under_an_auto_filed_item_must_catch_its_filing_condition(
    what: str, rule: ThresholdRule, points: dict[str, ModbusPoint], interval_s: float,
    expected: list[tuple[str, str, object]],
) -> None:  # fmt: skip
    assert filing_gaps(rule, PONDING, points, interval_s) == expected, what


def test_an_item_filed_by_an_operator_or_without_a_line_holds_no_rule_to_a_line() -> None:
    offline = OfflineRule(kind="offline", id="offline", category="0406")
    manual = PONDING.model_copy(update={"filing": Filing(zh="人工", en="Operator")})
    no_line = PONDING.model_copy(update={"filing": Filing(zh="自动", en="Auto", auto=True)})
    assert filing_gaps(threshold(above=9), manual, DEPTH_M, 5) == []
    assert filing_gaps(offline, no_line, DEPTH_M, 5) == []


# ---- the shipped layers ------------------------------------------------------------------------


def test_shipped_layers_xuhui_tightens_and_names_its_department() -> None:
    cat = load_catalogue(SHIPPED)
    city_item, xuhui = cat.lookup("0406"), cat.lookup("0406", "310104")
    assert city_item is not None and xuhui is not None
    assert (city_item.limit_min("B"), xuhui.limit_min("B"), xuhui.limit_min("A")) == (60, 45, 30)
    assert (city_item.department.code, xuhui.department.code) == ("SH-PS", "310104-PS")
    assert cat.lookup("0406", "xuhui") == xuhui  # the name device locations may use
    assert cat.lookup("040611", "310104") is not None and cat.lookup("040611") is None
    ponding = cat.lookup("0406")
    assert ponding is not None and (ponding.filing.point, ponding.filing.above) == (
        "water_depth", 0.15)  # fmt: skip
    assert (ponding.filing.for_s, ponding.closure.verify_window_s) == (300, 1800)
    gas1, gas2 = cat.lookup("040301"), cat.lookup("040302")
    assert gas1 is not None and gas2 is not None
    assert (gas1.filing.above, gas2.filing.above) == (25, 50)  # GB/T 50493-2019


def test_shipped_items_have_both_names_and_ordered_limits() -> None:
    cat = load_catalogue(SHIPPED)
    items = [*cat.city.values(), *(i for d in cat.districts.values() for i in d.values())]
    for item in items:
        assert item.name.zh and item.name.en and item.department.zh and item.department.en
        lim = item.limits_min
        assert lim.A <= lim.B <= lim.C, item.code


@pytest.mark.parametrize("name", ["national.yaml", "city-shanghai.yaml", "district-xuhui.yaml"])
def test_shipped_layers_say_they_are_a_subset_with_placeholders(name: str) -> None:
    text = (SHIPPED / name).read_text()
    assert "REPRESENTATIVE SUBSET" in text and "catalogue import" in text
    if name != "national.yaml":
        assert "PLACEHOLDERS" in text


def test_the_shipped_schema_is_up_to_date(tmp_path: Path) -> None:
    """Editors validate layer files with it (x- anchor blocks allowed beside `catalogue`)."""
    assert cli(["config", "check", str(SHIPPED), "--schema-dir", str(tmp_path)]) == 0
    shipped = SHIPPED.parent / "schema" / "catalogue.schema.json"
    assert (tmp_path / "catalogue.schema.json").read_text() == shipped.read_text(), (
        "regenerate: gridwatch config check --schema-dir firmware_configs/schema"
    )


def test_an_installation_runs_on_the_catalogue_folder_it_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GRIDWATCH_CATALOGUE names a district's own (imported) layers; profiles are held to it."""
    folder(tmp_path, CITY)  # its 0406 is filed by an operator, severity major
    profile = SHIPPED.parent / "profiles" / "ponding_depth.yaml"
    assert check(profile) == []
    monkeypatch.setenv("GRIDWATCH_CATALOGUE", str(tmp_path))
    assert default_catalogue_dir() == tmp_path
    assert [p.split(": ", 1)[1] for p in check(profile)] == [
        "profile -> rules -> 1 -> category: not a code of the catalogue (got '040602')",
        "profile -> rules -> 2 -> severity: 2101 is '名2101' (Item 2101), major in the "
        "catalogue: a rule under it must be major too, or use a code that fits the rule (got "
        "'minor')",
    ]


def test_a_centre_process_refuses_to_start_on_a_broken_catalogue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Said at start with file:line, not at the first alert deep in the ingest loop."""
    folder(tmp_path, CITY, district("  overrides:\n    - {code: '0406', limits_min: {C: 91}}\n"))
    monkeypatch.setenv("GRIDWATCH_CATALOGUE", str(tmp_path))
    with pytest.raises(SystemExit) as stopped:
        cli(["registry", "serve", "--data-dir", str(tmp_path / "data")])
    assert stopped.value.code == 1
    assert (
        f"{tmp_path}/district.yaml:7: catalogue -> overrides -> 0 -> limits_min -> C: loosens "
        "0406 '名0406' in area class C from the city's 90 min"
    ) in capsys.readouterr().err
