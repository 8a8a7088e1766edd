"""The catalogue on the national classification (GB/T 30428.2): national classes, the city's
standards on them, and each district's layer on top.

Three layers, one file each, in one folder (``firmware_configs/catalogue`` ships one of each)::

    national  classes only: 4-digit class code (2-digit major + 2-digit minor), kind, names
    city      the city's standards (Shanghai): per item its filing condition (立案条件), disposal
              time limits by area class (处置时限 A/B/C), closure condition (结案条件) and the
              responsible department; on a national class, or on a local extension (major 21 up)
    district  a district's own items (Xuhui, 310104) and tightened limits or its own department

An item's ``code`` is its class code, or a longer detail code (立案明细编码) that begins with it:
``0406`` road waterlogging, ``040602`` the same over 30 cm. Alerts name the item's code (rules in
profiles reference it), so an item code is unique in the merged catalogue; the national tables of
components and events reuse the same digits (component 0401 heritage tree, event 0401 road
collapse), which is why the national layer is keyed by kind and code and items are not.

A district may add items and tighten limits, never loosen them or redefine a city item: the
loader refuses such a layer with every problem at once as ``file:line: key: message``.
``rule_problems`` holds a rule to its code: the code must be an item, the rule's severity the
item's (a minor 'rising fast' rule under a critical 'underpass flooding' code would dispatch the
wrong crew at the wrong speed), and a rule under an item the centre files by itself must catch
the filing condition: same point and unit, a threshold no further out than the filing line and no
longer a wait than its duration (else ponding between 15 cm and the rule's 20 cm is never filed).

The shipped lists are a representative subset, and their time limits are placeholders a district
replaces: the official numbers were not found (shared/domain-facts.md §3). ``gridwatch catalogue
import`` turns a full list (CSV or YAML) into a layer file (gridwatch.ground.catalogueimport).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import ConfigDict, Discriminator, Field, Tag, model_validator

from firmware_configs import CATALOGUE
from gridwatch.ground.contract import Severity
from gridwatch.ground.profiles import Point, Rule, Strict, ThresholdRule
from gridwatch.ground.shipped import firmware
from gridwatch.ground.yamlconf import (
    ConfigError,
    ConfigProblem,
    KeyPath,
    iter_yaml_files,
    load_model,
    parse_yaml,
    read_text,
    validate,
)

Kind = Literal["component", "event"]
AreaClass = Literal["A", "B", "C"]
ClassKey = tuple[Kind, str]
"""A national class is known by its kind and code: the two tables reuse the same digits."""
DEFAULT_AREA_CLASS: AreaClass = "B"
"""The area class of a place whose grid cell is not known (spec: others read "B" then)."""
LOCAL_MAJOR = 21
"""Majors from 21 are local extensions (BJ21xx, 21 扩展事件 in practice): no national class."""
CLASS_CODE = r"^(0[1-9]|[1-9][0-9])(0[1-9]|[1-9][0-9])$"
ITEM_CODE = r"^(0[1-9]|[1-9][0-9])(0[1-9]|[1-9][0-9])([0-9]{2}){0,2}$"
KINDS_ZH = {"component": "部件", "event": "事件"}


class Names(Strict):
    zh: str = Field(min_length=1, description="Chinese name (read first).")
    en: str = Field(min_length=1, description="English name.")


class Filing(Strict):
    """立案条件: the words people file by, and the machine part the centre files by itself."""

    zh: str = Field(min_length=1, description="Filing condition, Chinese.")
    en: str = Field(min_length=1, description="Filing condition, English.")
    auto: bool = Field(
        default=False,
        description="The centre files a case by itself when an alert of this code has held "
        "(still active) for for_s seconds, with its value over 'above' (or under 'below') on "
        "'point' when they are given; false: an operator files.",
    )
    point: str | None = Field(default=None, description="Point the value is read on.")
    above: float | None = Field(default=None, description="File when the value is over this.")
    below: float | None = Field(default=None, description="File when the value is under this.")
    for_s: int = Field(default=0, ge=0, description="Seconds the alert must have held.")
    unit: str | None = Field(
        default=None, description="Unit of above/below; a rule's point must be in it."
    )

    @model_validator(mode="after")
    def _machine_part(self) -> Filing:
        has_line = self.above is not None or self.below is not None
        if not self.auto and (self.point is not None or has_line):
            raise ValueError("'point', 'above' and 'below' are the automatic part: set 'auto'")
        if has_line and self.point is None:
            raise ValueError("'above' or 'below' needs the 'point' it is read on")
        if self.point is not None and not has_line:
            raise ValueError("'point' needs 'above' or 'below'")
        return self


class Limits(Strict):
    """处置时限 by area class, minutes (A: the core area, usually the tightest)."""

    A: int = Field(gt=0, description="Minutes in an area of class A (core).")
    B: int = Field(gt=0, description="Minutes in an area of class B.")
    C: int = Field(gt=0, description="Minutes in an area of class C.")


class Closure(Strict):
    """结案条件; with ``verify_window_s`` the sensor itself can verify (自动核查)."""

    zh: str = Field(min_length=1, description="Closure condition, Chinese.")
    en: str = Field(min_length=1, description="Closure condition, English.")
    verify_window_s: int | None = Field(
        default=None,
        gt=0,
        description="Seconds the condition must stay clear after disposal was reported for "
        "the sensor to verify; none: an inspector verifies.",
    )


class Department(Strict):
    code: str = Field(min_length=1, description="Department code (归属部门代码).")
    zh: str = Field(min_length=1, description="Chinese name.")
    en: str = Field(min_length=1, description="English name.")


class NationalClass(Strict):
    code: str = Field(pattern=CLASS_CODE, description="4-digit class code, e.g. 0406.")
    kind: Kind = Field(description="component (部件) or event (事件).")
    name: Names


class Category(Strict):
    """One catalogue item: a city's (or district's) standard for one class or detail."""

    code: str = Field(
        pattern=ITEM_CODE,
        description="Class code (4 digits) or a detail code beginning with it (6 or 8).",
    )
    kind: Kind = Field(description="component (部件) or event (事件).")
    name: Names
    severity: Severity = Field(description="Severity a rule under this code must have.")
    filing: Filing
    limits_min: Limits
    closure: Closure
    department: Department = Field(description="Responsible (dispatch) department.")

    @property
    def class_code(self) -> str:
        return self.code[:4]

    @property
    def local(self) -> bool:
        """A local extension (major 21 up), not a national class."""
        return int(self.code[:2]) >= LOCAL_MAJOR

    def limit_min(self, area_class: str) -> int:
        """Minutes allowed for disposal in an area of this class ("a" is "A"); an unknown or
        empty class is "B", the spec's default for a place whose grid cell is not known."""
        key = area_class.upper() if area_class.upper() in ("A", "B", "C") else DEFAULT_AREA_CLASS
        return int(getattr(self.limits_min, key))


class LimitsOverride(Strict):
    A: int | None = Field(default=None, gt=0, description="Tighter minutes for class A.")
    B: int | None = Field(default=None, gt=0, description="Tighter minutes for class B.")
    C: int | None = Field(default=None, gt=0, description="Tighter minutes for class C.")


class Override(Strict):
    code: str = Field(description="Code of the city item this district adjusts.")
    limits_min: LimitsOverride | None = Field(default=None, description="Tightened limits.")
    department: Department | None = Field(
        default=None, description="The district's own department for this item."
    )


class NationalLayer(Strict):
    layer: Literal["national"]
    name: Names
    classes: list[NationalClass] = Field(description="Component and event classes.")


class CityLayer(Strict):
    layer: Literal["city"]
    city: str = Field(pattern=r"^[0-9]{6}$", description="The city's administrative code.")
    extends: str = Field(description="File name of the national layer.")
    name: Names
    categories: list[Category] = Field(description="The city's standards.")


class DistrictLayer(Strict):
    layer: Literal["district"]
    district: str = Field(pattern=r"^[0-9]{6}$", description="District code (GB/T 2260).")
    aliases: list[str] = Field(
        default_factory=list, description="Other names device locations use for the district."
    )
    extends: str = Field(description="File name of the city layer.")
    name: Names
    categories: list[Category] = Field(default_factory=list, description="Added items.")
    overrides: list[Override] = Field(default_factory=list, description="Tightened items.")


Layer = NationalLayer | CityLayer | DistrictLayer


def _layer_tag(value: object) -> str:
    layer = value.get("layer") if isinstance(value, dict) else getattr(value, "layer", None)
    return f"{layer} layer"


# Tagged by a name that is no key of the file: with the plain discriminator pydantic puts the
# value "district" in an error's location, where it reads as the layer's `district` key.
TaggedLayer = Annotated[
    Annotated[NationalLayer, Tag("national layer")]
    | Annotated[CityLayer, Tag("city layer")]
    | Annotated[DistrictLayer, Tag("district layer")],
    Discriminator(
        _layer_tag,
        custom_error_type="layer",
        custom_error_message="'layer' must be national, city or district",
    ),
]


class CatalogueFile(Strict):
    """A layer file. Top-level keys starting with ``x-`` hold YAML anchors (departments, limit
    sets) the items refer to, as in docker compose files; nothing else may stand beside it."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, json_schema_extra={"patternProperties": {"^x-": {}}}
    )

    catalogue: TaggedLayer

    @model_validator(mode="before")
    @classmethod
    def _drop_anchor_blocks(cls, data: object) -> object:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not str(k).startswith("x-")}
        return data


class Catalogue:
    """National classes, the city's items, and each district's view of them."""

    def __init__(
        self,
        classes: Mapping[ClassKey, NationalClass],
        city: dict[str, Category],
        districts: dict[str, dict[str, Category]] | None = None,
        aliases: Mapping[str, str] | None = None,
    ) -> None:
        self.classes = dict(classes)
        self.city = city
        self.districts = districts or {}
        self.aliases = dict(aliases or {})

    def for_district(self, district: str) -> dict[str, Category]:
        return self.districts.get(self.aliases.get(district, district), self.city)

    def lookup(self, code: str, district: str = "") -> Category | None:
        """The item ``code`` as ``district`` has it (its code or an alias; else the city's)."""
        return self.for_district(district).get(code)

    def find(self, code: str) -> Category | None:
        """A code of the city, or one a district layer adds (a profile belongs to no district)."""
        found = self.city.get(code)
        for cats in self.districts.values():
            found = found or cats.get(code)
        return found

    def class_name(self, kind: Kind, class_code: str) -> Names | None:
        """The name of a class (a national one, or a local extension an item defines)."""
        national = self.classes.get((kind, class_code))
        if national is not None:
            return national.name
        items = [*self.city.values(), *(c for d in self.districts.values() for c in d.values())]
        local = next((c for c in items if c.kind == kind and c.code == class_code), None)
        return None if local is None else local.name


# ---- rules in profiles held to the catalogue -------------------------------------------------


def rule_problems(
    rules: Sequence[Rule], catalogue: Catalogue, file: str, at: KeyPath,
    lines: dict[KeyPath, int], points: Mapping[str, Point] | None = None,
    interval_s: float | None = None,
) -> list[ConfigProblem]:  # fmt: skip
    """Each rule (listed at key path ``at``) whose code is not in the catalogue, whose severity
    is not the item's, or that cannot meet the filing condition of an item the centre files by
    itself (``points`` and ``interval_s``: the rule's profile, when known)."""
    out = []
    for i, rule in enumerate(rules):
        here: KeyPath = (*at, i)
        cat = catalogue.find(rule.category)
        if cat is None:
            where = (*here, "category")
            out.append(ConfigProblem(file, lines.get(where), where,
                                     "not a code of the catalogue", rule.category))  # fmt: skip
            continue
        if rule.severity != cat.severity:
            where = (*here, "severity")
            msg = (f"{cat.code} is '{cat.name.zh}' ({cat.name.en}), {cat.severity.value} in "
                   f"the catalogue: a rule under it must be {cat.severity.value} too, or use a "
                   "code that fits the rule")  # fmt: skip
            out.append(ConfigProblem(file, lines.get(where) or lines.get(here), where, msg,
                                     rule.severity.value))  # fmt: skip
        for key, msg, value in filing_gaps(rule, cat, points or {}, interval_s):
            where = (*here, key)
            out.append(ConfigProblem(file, lines.get(where) or lines.get(here), where, msg,
                                     value))  # fmt: skip
    return out


def filing_gaps(
    rule: Rule, cat: Category, points: Mapping[str, Point], interval_s: float | None
) -> list[tuple[str, str, object]]:
    """Why ``rule`` cannot meet the automatic filing condition of ``cat``: (rule key, message,
    value); empty when it can, or when the item is filed by an operator."""
    f = cat.filing
    if not f.auto or f.point is None:
        return []  # no line to meet: every alert of the code files once held for for_s
    head = f"{cat.code} '{cat.name.zh}' is filed by the centre when {f.point}"
    if not isinstance(rule, ThresholdRule):
        return [("kind", f"{head} crosses a line: only a threshold rule can catch that", rule.kind)]
    if rule.point != f.point:
        return [("point", f"{head} crosses the line; this rule watches another point", rule.point)]
    gaps: list[tuple[str, str, object]] = []
    point = points.get(rule.point)
    unit = point.unit if point is not None else ""
    if f.unit is not None and unit and unit != f.unit:
        gaps.append(("point", f"{head} is in {f.unit}; the profile's {rule.point} is in {unit}",
                     unit))  # fmt: skip
    if f.above is not None and (rule.above is None or rule.above > f.above):
        gaps.append(("above", f"{head} is over {f.above:g}: a rule raising only further out "
                     "leaves values between them unfiled", rule.above))  # fmt: skip
    if f.below is not None and (rule.below is None or rule.below < f.below):
        gaps.append(("below", f"{head} is under {f.below:g}: a rule raising only further out "
                     "leaves values between them unfiled", rule.below))  # fmt: skip
    wait = rule.debounce_s + (rule.debounce_samples - 1) * (interval_s or 0)
    if wait > f.for_s:
        gaps.append(("debounce_s" if rule.debounce_s else "debounce_samples",
                     f"{head} has held for {f.for_s} s; this rule waits {wait:g} s before it "
                     "raises", wait))  # fmt: skip
    return gaps


# ---- layers merged and checked ---------------------------------------------------------------


def _where(file: str, lines: Mapping[KeyPath, int], path: KeyPath) -> tuple[str, int | None]:
    for n in range(len(path), -1, -1):
        if path[:n] in lines:
            return file, lines[path[:n]]
    return file, None


def _problem(
    file: str, lines: Mapping[KeyPath, int], path: KeyPath, msg: str, value: object = None
) -> ConfigProblem:
    return ConfigProblem(*_where(file, lines, path), path, msg, value)


def item_problems(
    items: Sequence[Category], classes: Mapping[ClassKey, NationalClass],
    taken: Mapping[str, Category], file: str, lines: Mapping[KeyPath, int], taken_by: str,
) -> list[ConfigProblem]:  # fmt: skip
    """Items (a city's, or those a district adds) on unknown classes, repeated codes, or codes
    ``taken`` already (by the layer below, ``taken_by``)."""
    out = []
    seen: dict[str, int] = {}
    for i, cat in enumerate(items):
        at: KeyPath = ("catalogue", "categories", i, "code")
        if cat.code in taken:
            old = taken[cat.code]
            out.append(_problem(file, lines, at, f"redefines {taken_by} item {old.code} "
                                f"'{old.name.zh}': a district may add items and tighten "
                                "limits (overrides), not redefine", cat.code))  # fmt: skip
        elif cat.code in seen:
            out.append(_problem(file, lines, at, f"code repeated (item {seen[cat.code]} has it): "
                                "alerts name one item by its code; give one a detail code",
                                cat.code))  # fmt: skip
        seen.setdefault(cat.code, i)
        if not cat.local and (cat.kind, cat.class_code) not in classes:
            other = "event" if cat.kind == "component" else "component"
            hint = (f"; the national layer has it as {other} class"
                    if (other, cat.class_code) in classes else
                    f"; local extensions use majors from {LOCAL_MAJOR}")  # fmt: skip
            out.append(_problem(file, lines, at, f"{cat.class_code} is no national "
                                f"{cat.kind} class{hint}", cat.code))  # fmt: skip
    return out


def override_problems(
    overrides: Sequence[Override], city: Mapping[str, Category], file: str,
    lines: Mapping[KeyPath, int],
) -> list[ConfigProblem]:  # fmt: skip
    """Overrides of codes the city does not have, and limits looser than the city's."""
    out = []
    for i, o in enumerate(overrides):
        at: KeyPath = ("catalogue", "overrides", i)
        base = city.get(o.code)
        if base is None:
            out.append(_problem(file, lines, (*at, "code"), "not a city item", o.code))
            continue
        for area, mins in (o.limits_min.model_dump() if o.limits_min else {}).items():
            city_mins = getattr(base.limits_min, area)
            if mins is not None and mins > city_mins:
                msg = (f"loosens {base.code} '{base.name.zh}' in area class {area} from the "
                       f"city's {city_mins} min: a district may only tighten")  # fmt: skip
                out.append(_problem(file, lines, (*at, "limits_min", area), msg, mins))
    return out


def apply_overrides(city: Mapping[str, Category], layer: DistrictLayer) -> dict[str, Category]:
    merged = dict(city)
    for cat in layer.categories:
        merged[cat.code] = cat
    for o in layer.overrides:
        base = merged[o.code]
        update: dict[str, object] = {}
        if o.limits_min is not None:
            tight = {k: v for k, v in o.limits_min.model_dump().items() if v is not None}
            update["limits_min"] = base.limits_min.model_copy(update=tight)
        if o.department is not None:
            update["department"] = o.department
        merged[o.code] = base.model_copy(update=update)
    return merged


_Loaded = tuple[str, Layer, dict[KeyPath, int]]


def _read_layer(path: Path) -> _Loaded:
    data, lines = parse_yaml(read_text(path), str(path))
    return str(path), validate(CatalogueFile, data, str(path), lines).catalogue, lines


def _lines_of(loaded: list[_Loaded], file: str) -> dict[KeyPath, int]:
    return next(lines for f, _, lines in loaded if f == file)


def _one(loaded: list[_Loaded], kind: type[Layer], what: str, root: str) -> _Loaded:
    found = [x for x in loaded if isinstance(x[1], kind)]
    if len(found) != 1:
        names = ", ".join(Path(f).name for f, _, _ in found) or "none"
        raise ConfigError([ConfigProblem(root, None, (), f"needs exactly one {what} layer "
                                         f"(found: {names})")])  # fmt: skip
    return found[0]


def _extends(
    file: str, lines: Mapping[KeyPath, int], layer: Layer, base: str
) -> list[ConfigProblem]:
    name = Path(base).name
    if isinstance(layer, NationalLayer) or layer.extends == name:
        return []
    return [_problem(file, lines, ("catalogue", "extends"), f"the layer below is {name}",
                     layer.extends)]  # fmt: skip


def load_catalogue(root: Path | str) -> Catalogue:
    """The catalogue of the layer files in folder ``root``: one national, one city, any number
    of districts. Raises ConfigError with every problem of every file."""
    return load_catalogue_files(list(iter_yaml_files(Path(root))), str(root))


def load_catalogue_files(paths: Sequence[Path], where: str) -> Catalogue:
    """The catalogue of these layer files (``where`` names them in a problem of the set)."""
    problems: list[ConfigProblem] = []
    loaded: list[_Loaded] = []
    for path in paths:
        try:
            loaded.append(_read_layer(path))
        except ConfigError as exc:
            problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    nfile, national, _ = _one(loaded, NationalLayer, "national", where)
    cfile, city, clines = _one(loaded, CityLayer, "city", where)
    assert isinstance(national, NationalLayer) and isinstance(city, CityLayer)
    classes = {(c.kind, c.code): c for c in national.classes}
    problems += class_problems(national, nfile, _lines_of(loaded, nfile))
    problems += _extends(cfile, clines, city, nfile)
    problems += item_problems(city.categories, classes, {}, cfile, clines, "city")
    items = {c.code: c for c in city.categories}
    districts: dict[str, dict[str, Category]] = {}
    aliases: dict[str, str] = {}
    for file, layer, lines in loaded:
        if not isinstance(layer, DistrictLayer):
            continue
        found = _extends(file, lines, layer, cfile)
        found += item_problems(layer.categories, classes, items, file, lines, "city")
        found += override_problems(layer.overrides, items, file, lines)
        problems += found
        if not found:
            districts[layer.district] = apply_overrides(items, layer)
            aliases.update((a, layer.district) for a in layer.aliases)
    if problems:
        raise ConfigError(problems)
    return Catalogue(classes, items, districts, aliases)


_BELOW: dict[type[Layer], tuple[type[Layer], ...]] = {
    NationalLayer: (),
    CityLayer: (NationalLayer,),
    DistrictLayer: (NationalLayer, CityLayer),
}


def layer_context(path: Path, shipped: Path, folder: Path | None = None) -> list[Path]:
    """The files a layer is checked with: the layers of its folder (or ``folder``: where an
    import will write it), and the shipped layers below it that the folder lacks (a district
    checking its own file alone is judged against the shipped city and national layers)."""
    here = [p for p in iter_yaml_files(folder or path.parent)
            if p.name != path.name and _safe_layer(p) is not None]  # fmt: skip
    kinds = {type(_safe_layer(p)) for p in [path, *here]}
    out = [path, *here]
    for kind in _BELOW.get(type(_safe_layer(path)), ()):  # type: ignore[arg-type]
        if kind not in kinds:
            out += [p for p in iter_yaml_files(shipped) if isinstance(_safe_layer(p), kind)]
    return out


def layer_problems(path: Path, shipped: Path, folder: Path | None = None) -> list[ConfigProblem]:
    """Every problem of the layer set ``path`` is checked in (``layer_context``); a national
    layer with no city layer above it is checked on its own (its classes repeated or not)."""
    file = str(path)
    data, lines = parse_yaml(read_text(path), file)
    layer = validate(CatalogueFile, data, file, lines).catalogue
    context = layer_context(path, shipped, folder)
    if isinstance(layer, NationalLayer) and not any(
        isinstance(_safe_layer(p), CityLayer) for p in context
    ):
        return class_problems(layer, file, lines)
    try:
        load_catalogue_files(context, str(folder or path.parent))
    except ConfigError as exc:
        return exc.problems
    return []


def class_problems(
    layer: NationalLayer, file: str, lines: Mapping[KeyPath, int]
) -> list[ConfigProblem]:
    """A national class listed twice (the same kind and code)."""
    out, seen = [], set()
    for i, c in enumerate(layer.classes):
        if (c.kind, c.code) in seen:
            at: KeyPath = ("catalogue", "classes", i, "code")
            out.append(_problem(file, lines, at, f"{c.kind} class repeated", c.code))
        seen.add((c.kind, c.code))
    return out


def _safe_layer(path: Path) -> Layer | None:
    try:
        return load_layer(path)
    except ConfigError:
        return None  # reported when the set is loaded


def load_layer(path: Path | str) -> Layer:
    """One layer file on its own (its shape only: ``load_catalogue`` checks it in its folder)."""
    return load_model(CatalogueFile, path).catalogue


CATALOGUE_ENV = "GRIDWATCH_CATALOGUE"
"""A folder of layer files (a district's imported lists) used instead of the shipped layers."""


def default_catalogue_dir() -> Path:
    """The catalogue this installation runs on: the folder ``GRIDWATCH_CATALOGUE`` names, else
    the layers gridwatch ships (package data, wherever gridwatch is installed)."""
    chosen = os.environ.get(CATALOGUE_ENV, "")
    return Path(chosen) if chosen else firmware(CATALOGUE)
