"""`gridwatch catalogue import`: a district loads its full list (the city's 178 items and its own
28) from CSV or YAML without code; a bad row is told by file, line and column."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gridwatch.ground.catalogue import Category, default_catalogue_dir, load_catalogue
from gridwatch.ground.catalogueimport import decode, items_from_csv, items_from_yaml
from gridwatch.ground.yamlconf import ConfigError
from gridwatch.top.cli import main as cli
from gridwatch.top.configcheck import check

HEAD_EN = (
    "code,kind,name_zh,name_en,severity,filing_zh,filing_en,filing_auto,filing_point,"
    "filing_above,filing_unit,filing_for_s,limit_a,limit_b,limit_c,closure_zh,closure_en,"
    "verify_window_s,dept_code,dept_zh,dept_en\n"
)
HEAD_ZH = (
    "编码,类型,名称,英文名称,级别,立案条件,立案条件英文,自动立案,测点,高于,单位,持续秒数,"
    "处置时限A（分钟）,处置时限B（分钟）,处置时限C（分钟）,结案条件,结案条件英文,核查窗口秒,"
    "部门代码,部门名称,部门英文名称\n"
)


def row(code: str, *, kind: str = "事件", severity: str = "重要", auto: str = "否",
        point: str = "", above: str = "", unit: str = "", for_s: str = "",
        limits: tuple[str, str, str] = ("30", "60", "90"), window: str = "") -> str:  # fmt: skip
    return ",".join([
        code, kind, f"名{code}", f"Item {code}", severity, "立案条件", "Filing", auto, point,
        above, unit, for_s, *limits, "结案条件", "Closure", window, "D1", "部门", "Department",
    ]) + "\n"  # fmt: skip


PONDING = row("040612", severity="紧急", auto="是", point="water_depth", above="0.15", unit="m",
              for_s="0", limits=("15", "15", "20"), window="1800")  # fmt: skip


def test_a_row_with_chinese_headers_and_words_becomes_an_item() -> None:
    [item], [line] = items_from_csv(HEAD_ZH + PONDING, "x.csv", Category)
    assert line == 2
    assert (item.code, item.kind, item.severity.value) == ("040612", "event", "critical")
    assert (item.filing.auto, item.filing.point, item.filing.above, item.filing.for_s) == (
        True, "water_depth", 0.15, 0)  # fmt: skip
    assert (item.limit_min("A"), item.closure.verify_window_s) == (15, 1800)
    assert (item.name.zh, item.department.en) == ("名040612", "Department")
    same, _ = items_from_csv(HEAD_EN + PONDING.replace("事件", "event"), "x.csv", Category)
    assert same == [item]


# (what, csv text, expected problems)
BAD_CSV = [
    ("a spreadsheet dropped the leading zero", HEAD_ZH + row("406"),
     ["x.csv:2: 编码: 3 digits: a spreadsheet drops leading zeros; format the column as text "
      "(0406) (got '406')"]),
    ("a limit that is no number", HEAD_ZH + row("0406", limits=("30", "一小时", "90")),
     ["x.csv:2: 处置时限B（分钟）: Input should be a valid integer, unable to parse string as an "
      "integer (got '一小时')"]),
    ("a severity nobody knows", HEAD_ZH + row("0406", severity="很急"),
     ["x.csv:2: 级别: Input should be 'info', 'minor', 'major' or 'critical' (got '很急')"]),
    ("automatic filing without its point", HEAD_ZH + row("0406", auto="是", above="0.15"),
     ["x.csv:2: 立案条件/立案条件英文/自动立案/测点/高于/单位/持续秒数: 'above' or 'below' needs "
      "the 'point' it is read on"]),
    ("a required column missing", HEAD_EN.replace(",dept_en", "") + row("0406").rsplit(",", 1)[0]
     + "\n", ["x.csv:2: dept_en: Field required"]),
    ("a misspelt header", HEAD_EN.replace("severity", "severty") + row("0406"),
     ["x.csv:1: severty: unknown column: the columns are code, kind, name_zh, name_en, "
      "severity, filing_zh, filing_en, filing_auto, filing_point, filing_above, filing_below, "
      "filing_unit, filing_for_s, limit_a, limit_b, limit_c, closure_zh, closure_en, "
      "verify_window_s, dept_code, dept_zh, dept_en"]),
    ("a short row, on the line it is", HEAD_ZH + PONDING + "\n" + "0406,事件\n",
     ["x.csv:4: (top level): 2 cells, the header has 21"]),
]  # fmt: skip


@pytest.mark.parametrize(("what", "text", "expected"), BAD_CSV)
def test_a_bad_row_is_told_by_file_line_and_column(
    what: str, text: str, expected: list[str]
) -> None:
    with pytest.raises(ConfigError) as exc:
        items_from_csv(text, "x.csv", Category)
    assert [str(p) for p in exc.value.problems] == expected, what


def test_a_yaml_list_is_told_by_key_path() -> None:
    text = (
        "categories:\n  - code: '0406'\n    kind: event\n    name: {zh: 水, en: W}\n"
        "    severity: major\n"
    )
    with pytest.raises(ConfigError) as exc:
        items_from_yaml(text, "l.yaml", Category)
    assert str(exc.value.problems[0]) == "l.yaml:2: categories -> 0 -> filing: Field required"


@pytest.mark.parametrize("encoding", ["utf-8", "utf-8-sig", "gb18030"])
def test_a_list_saved_by_a_spreadsheet_is_read(encoding: str) -> None:
    assert decode((HEAD_ZH + PONDING).encode(encoding), "x.csv") == HEAD_ZH + PONDING


def _import(src: Path, out: Path, layer: str, area: str, extends: str) -> int:
    args = ["catalogue", "import", str(src), "--layer", layer, "--name-zh", "清单",
            "--name-en", "List", "-o", str(out)]  # fmt: skip
    if layer != "national":
        args += ["--area", area, "--extends", extends]
    return cli(args)


def test_a_district_loads_the_citys_178_items_and_its_own_28_without_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lists, cat = tmp_path / "lists", tmp_path / "catalogue"
    lists.mkdir()
    cat.mkdir()
    shutil.copy(default_catalogue_dir() / "national.yaml", cat / "national.yaml")
    # the city's list: standards on national classes and on local ones (majors 21, 22)
    city = [row(f"0406{i:02d}") for i in range(1, 21)]
    city += [row(f"{21 + i // 99}{i % 99 + 1:02d}") for i in range(158)]
    (lists / "city.csv").write_text(HEAD_ZH + "".join(city), encoding="utf-8-sig")
    own = [row(f"23{i:02d}", limits=("10", "20", "30")) for i in range(1, 29)]
    (lists / "xuhui.csv").write_text((HEAD_ZH + "".join(own)), encoding="gb18030")

    assert _import(lists / "city.csv", cat / "city.yaml", "city", "310000", "national.yaml") == 0
    assert _import(lists / "xuhui.csv", cat / "xuhui.yaml", "district", "310104",
                   "city.yaml") == 0  # fmt: skip
    assert capsys.readouterr().out.splitlines() == [
        f"wrote {cat / 'city.yaml'}: city layer, items: 178",
        f"wrote {cat / 'xuhui.yaml'}: district layer, items: 28",
    ]
    loaded = load_catalogue(cat)
    assert len(loaded.city) == 178 and len(loaded.for_district("310104")) == 178 + 28
    assert loaded.lookup("2328", "310104") is not None and loaded.lookup("2328") is None
    assert all(check(p) == [] for p in cat.iterdir())


def test_an_import_that_would_loosen_a_limit_writes_nothing_and_names_the_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A district's list that redefines a city item is refused at the row (against the shipped
    city layer, since the target folder has none)."""
    src, out = tmp_path / "x.csv", tmp_path / "out" / "district-x.yaml"
    src.write_text(HEAD_ZH + PONDING + row("0406"), encoding="utf-8")
    assert _import(src, out, "district", "310104", "city-shanghai.yaml") == 1
    assert capsys.readouterr().out.splitlines() == [
        f"{src}:3: item -> 2 -> code: redefines city item 0406 '道路积水': a district may add "
        "items and tighten limits (overrides), not redefine (got '0406')"
    ]
    assert not out.exists()


def test_the_national_table_imports_classes_of_both_kinds(tmp_path: Path) -> None:
    src, out = tmp_path / "n.csv", tmp_path / "national.yaml"
    src.write_text("code,kind,name_zh,name_en\n0401,部件,古树名木,Heritage tree\n"
                   "0401,事件,路面塌陷,Road collapse\n")  # fmt: skip
    assert _import(src, out, "national", "", "") == 0
    assert "古树名木" in out.read_text(encoding="utf-8")


def test_an_import_needs_the_layer_below_named(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["catalogue", "import", "x.csv", "--layer", "district", "--name-zh", "z",
                "--name-en", "e", "-o", "o.yaml"]) == 2  # fmt: skip
    assert "a district layer needs --area and --extends" in capsys.readouterr().err
