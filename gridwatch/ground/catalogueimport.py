"""A full catalogue list (the city's 178 standards, a district's 28) read from CSV or YAML into
the items of one layer, so a district loads its list without code (``gridwatch catalogue
import``, docs/catalogue.md). Pure: text in, items or problems out.

CSV: one row per item, a header row naming the columns below in English or Chinese (either, in
any order; unknown columns are refused, so a misspelt header is not dropped silently). Encoding
UTF-8 (with or without the BOM a spreadsheet writes) or GB18030 (what Excel saves on a Chinese
Windows). YAML: a list of items in the layer file's own shape, or a mapping with ``categories``.

Every problem names the file, the line and the column (CSV) or key path (YAML), all at once.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from gridwatch.ground.catalogue import Category, NationalClass
from gridwatch.ground.yamlconf import ConfigError, ConfigProblem, KeyPath, parse_yaml

# column -> (where in an item, Chinese headers accepted)
COLUMNS: dict[str, tuple[KeyPath, tuple[str, ...]]] = {
    "code": (("code",), ("编码", "代码", "小类代码", "立案明细编码")),
    "kind": (("kind",), ("类型", "部件事件")),
    "name_zh": (("name", "zh"), ("名称", "中文名称", "小类名称")),
    "name_en": (("name", "en"), ("英文名称",)),
    "severity": (("severity",), ("级别", "严重程度")),
    "filing_zh": (("filing", "zh"), ("立案条件",)),
    "filing_en": (("filing", "en"), ("立案条件英文",)),
    "filing_auto": (("filing", "auto"), ("自动立案",)),
    "filing_point": (("filing", "point"), ("测点",)),
    "filing_above": (("filing", "above"), ("高于",)),
    "filing_below": (("filing", "below"), ("低于",)),
    "filing_unit": (("filing", "unit"), ("单位",)),
    "filing_for_s": (("filing", "for_s"), ("持续秒数",)),
    "limit_a": (("limits_min", "A"), ("处置时限a", "a类时限")),
    "limit_b": (("limits_min", "B"), ("处置时限b", "b类时限")),
    "limit_c": (("limits_min", "C"), ("处置时限c", "c类时限")),
    "closure_zh": (("closure", "zh"), ("结案条件",)),
    "closure_en": (("closure", "en"), ("结案条件英文",)),
    "verify_window_s": (("closure", "verify_window_s"), ("核查窗口秒", "自动核查秒数")),
    "dept_code": (("department", "code"), ("部门代码", "归属部门代码")),
    "dept_zh": (("department", "zh"), ("部门名称", "责任部门")),
    "dept_en": (("department", "en"), ("部门英文名称",)),
}
WORDS: dict[str, dict[str, str]] = {
    "kind": {"部件": "component", "事件": "event"},
    "severity": {"提示": "info", "一般": "minor", "重要": "major", "紧急": "critical"},
    "filing_auto": {
        **dict.fromkeys(("是", "自动", "true", "yes", "y", "1"), "true"),
        **dict.fromkeys(("否", "人工", "false", "no", "n", "0", ""), "false"),
    },
}
"""Chinese (and spreadsheet) words a cell may hold for a value of that column."""
M = TypeVar("M", bound=BaseModel)
Item = Category | NationalClass
MODELS: dict[str, type[Category] | type[NationalClass]] = {
    "national": NationalClass,
    "city": Category,
    "district": Category,
}
"""The item model of each layer: the national layer lists classes (code, kind, names) only."""
_UNITS = ("（分钟）", "(分钟)", "(min)", "（秒）", "(秒)", "(s)")


def _normal(header: str) -> str:
    h = "".join(header.split()).lower()
    for unit in _UNITS:
        h = h.removesuffix(unit)
    return h


_BY_HEADER = {_normal(h): col for col, (_, zh) in COLUMNS.items() for h in (col, *zh)}


def decode(data: bytes, file: str) -> str:
    """The text of a CSV file as a spreadsheet saves it: UTF-8 (BOM or not), else GB18030."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError as exc:
        msg = f"neither UTF-8 nor GB18030 text (byte {exc.start}): save it as UTF-8 CSV"
        raise ConfigError([ConfigProblem(file, None, (), msg)]) from exc


def items_from_csv(text: str, file: str, model: type[M]) -> tuple[list[M], list[int]]:
    """The items of a CSV list and the line of each; ConfigError names file:line: column for
    every bad cell."""
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        raise ConfigError([ConfigProblem(file, None, (), "empty: no header row")])
    columns, problems = _columns(header, file)
    if problems:
        raise ConfigError(problems)  # rows under a header not understood would mislead
    items: list[M] = []
    lines: list[int] = []
    for line, row in _rows(reader):
        if not any(cell.strip() for cell in row):
            continue  # a blank line a spreadsheet leaves at the end
        if len(row) != len(header):
            msg = f"{len(row)} cells, the header has {len(header)}"
            problems.append(ConfigProblem(file, line, (), msg))
            continue
        try:
            item = _item(model, dict(zip(columns, row, strict=True)), header, columns, file, line)
        except ConfigError as exc:
            problems.extend(exc.problems)
            continue
        items.append(item)
        lines.append(line)
    if problems:
        raise ConfigError(problems)
    return items, lines


def _rows(reader: Any) -> Iterator[tuple[int, list[str]]]:
    for row in reader:
        yield reader.line_num, row


def _columns(header: list[str], file: str) -> tuple[list[str], list[ConfigProblem]]:
    cols, problems = [], []
    for h in header:
        col = _BY_HEADER.get(_normal(h), "")
        if not col:
            msg = "unknown column: the columns are " + ", ".join(COLUMNS)
            problems.append(ConfigProblem(file, 1, (h,), msg))
        elif col in cols:
            problems.append(ConfigProblem(file, 1, (h,), f"column {col} given twice"))
        cols.append(col)
    return cols, problems


def _item(
    model: type[M], cells: dict[str, str], header: list[str], columns: list[str], file: str,
    line: int,
) -> M:  # fmt: skip
    heads = dict(zip(columns, header, strict=True))
    data: dict[str, Any] = {}
    problems = []
    for col, raw in cells.items():
        value = raw.strip()
        value = WORDS.get(col, {}).get(value.lower(), value)
        if col == "code" and value.isdigit() and len(value) % 2:
            msg = (f"{len(value)} digits: a spreadsheet drops leading zeros; format the column "
                   f"as text (0{value})")  # fmt: skip
            problems.append(ConfigProblem(file, line, (heads[col],), msg, raw))
        if value == "" or (col == "filing_auto" and model is not Category):
            continue  # an empty cell: the key is absent (its default, or "Field required")
        where, _ = COLUMNS[col]
        node = data
        for key in where[:-1]:
            node = node.setdefault(str(key), {})
        node[str(where[-1])] = value
    try:
        item = model.model_validate(data)
    except ValidationError as exc:
        hinted = bool(problems)  # the code's lost zero, said already: not its pattern again
        problems += [_cell_problem(e, heads, file, line) for e in exc.errors()
                     if not (hinted and e["loc"] == ("code",))]  # fmt: skip
    if problems:
        raise ConfigError(problems)
    return item


def _cell_problem(err: Any, heads: dict[str, str], file: str, line: int) -> ConfigProblem:
    loc = tuple(str(p) for p in err["loc"])
    col = next((c for c, (where, _) in COLUMNS.items() if where == loc), None)
    if col is None:  # a check across cells (filing's 'auto' with its 'point'): name the group
        group = [c for c, (where, _) in COLUMNS.items() if where[: len(loc)] == loc]
        label = "/".join(heads[c] for c in group if c in heads) or "row"
    else:
        label = heads.get(col, col)  # a required column the file does not have: its name
    value = None if err["type"] == "missing" else err.get("input")
    msg = str(err["msg"]).removeprefix("Value error, ")
    return ConfigProblem(file, line, (label,), msg, None if isinstance(value, dict) else value)


def items_from_yaml(text: str, file: str, model: type[M]) -> tuple[list[M], list[int]]:
    """The items of a YAML list (a list, or a mapping with ``categories`` or ``classes``) and
    the line of each; errors by file:line: key path."""
    data, lines = parse_yaml(text, file)
    at: KeyPath = ()
    key = next((k for k in ("categories", "classes") if isinstance(data, dict) and k in data), "")
    if key:
        data, at = data[key], (key,)
    if not isinstance(data, list):
        msg = "expected a list of items, or a mapping with 'categories'"
        raise ConfigError([ConfigProblem(file, 1, (), msg)])
    items: list[M] = []
    problems = []
    for i, raw in enumerate(data):
        try:
            items.append(model.model_validate(raw))
        except ValidationError as exc:
            for e in exc.errors():
                path = (*at, i, *e["loc"])
                line = next((lines[path[:n]] for n in range(len(path), 0, -1)
                             if path[:n] in lines), None)  # fmt: skip
                value = None if e["type"] == "missing" else e.get("input")
                problems.append(ConfigProblem(file, line, path, e["msg"],
                                              None if isinstance(value, dict | list) else value))  # fmt: skip
    if problems:
        raise ConfigError(problems)
    return items, [lines.get((*at, i), 0) for i in range(len(items))]


def layer_data(
    items: list[Any], layer: str, area: str, extends: str, name_zh: str, name_en: str
) -> dict[str, Any]:
    """The layer file's content: ``area`` is the city's code for a city layer, the district's
    for a district layer (a national layer has neither, nor ``extends``)."""
    name = {"zh": name_zh, "en": name_en}
    dumped = [c.model_dump(mode="json", exclude_defaults=True) for c in items]
    if layer == "national":
        return {"catalogue": {"layer": layer, "name": name, "classes": dumped}}
    head = {"layer": layer, layer: area, "extends": extends, "name": name}
    return {"catalogue": {**head, "categories": dumped}}
