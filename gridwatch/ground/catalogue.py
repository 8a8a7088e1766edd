"""The event catalogue: a city-wide base list of event standards and district layers on top.

A district layer may add categories of its own and tighten a city time limit, never loosen it or
redefine a city code. Rules refer to catalogue codes; the centre takes time limits from here.
``rule_problems`` holds a rule to its code: the code must be in the catalogue and the rule's
severity must be the code's (a minor 'rising fast' rule filed under a critical 'underpass
flooding' code would dispatch the wrong crew at the wrong speed).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from firmware_configs import CATALOGUE
from gridwatch.ground.contract import Severity
from gridwatch.ground.profiles import Rule, Strict
from gridwatch.ground.shipped import firmware
from gridwatch.ground.yamlconf import (
    ConfigError,
    ConfigProblem,
    KeyPath,
    iter_yaml_files,
    load_model,
)


class Category(Strict):
    code: str = Field(
        pattern=r"^[A-Z0-9-]+$", description="Catalogue code, e.g. FLOOD-WATERLOG-01."
    )
    name: str = Field(description="What the event is.")
    severity: Severity = Field(description="Default severity.")
    time_limit_min: int = Field(gt=0, description="Minutes allowed for disposal.")
    unit: str = Field(default="", description="Responsible unit.")


class Override(Strict):
    code: str = Field(description="City code whose time limit this district tightens.")
    time_limit_min: int = Field(gt=0, description="The tighter limit, in minutes.")


class CityLayer(Strict):
    layer: Literal["city"]
    name: str = Field(description="Title of the list.")
    categories: list[Category] = Field(description="The city's event standards.")


class DistrictLayer(Strict):
    layer: Literal["district"]
    district: str = Field(description="District id, as in device locations.")
    extends: str = Field(description="File name of the city layer.")
    name: str = Field(description="Title of the layer.")
    categories: list[Category] = Field(default_factory=list, description="Added categories.")
    overrides: list[Override] = Field(default_factory=list, description="Tightened limits.")


class CatalogueFile(Strict):
    catalogue: Annotated[CityLayer | DistrictLayer, Field(discriminator="layer")]


class Catalogue:
    """City categories plus each district's view of them."""

    def __init__(
        self, city: dict[str, Category], districts: dict[str, dict[str, Category]]
    ) -> None:
        self.city = city
        self.districts = districts

    def for_district(self, district: str) -> dict[str, Category]:
        return self.districts.get(district, self.city)

    def lookup(self, code: str, district: str = "") -> Category | None:
        return self.for_district(district).get(code)

    def find(self, code: str) -> Category | None:
        """A code of the city, or one a district layer adds (a profile belongs to no district)."""
        found = self.city.get(code)
        for cats in self.districts.values():
            found = found or cats.get(code)
        return found


def rule_problems(
    rules: Sequence[Rule], catalogue: Catalogue, file: str, at: KeyPath,
    lines: dict[KeyPath, int],
) -> list[ConfigProblem]:  # fmt: skip
    """Each rule (listed at key path ``at``) whose category is not in the catalogue, or whose
    severity is not the one the catalogue gives that category."""
    out = []
    for i, rule in enumerate(rules):
        cat = catalogue.find(rule.category)
        if cat is None:
            where = (*at, i, "category")
            out.append(ConfigProblem(file, lines.get(where), where,
                                     "not a code of the event catalogue", rule.category))  # fmt: skip
        elif rule.severity != cat.severity:
            where = (*at, i, "severity")
            msg = (f"{cat.code} is '{cat.name}', {cat.severity.value} in the event catalogue: "
                   f"a rule under it must be {cat.severity.value} too, or use a code that fits "
                   "the rule")  # fmt: skip
            out.append(ConfigProblem(file, lines.get(where) or lines.get(where[:-1]), where, msg,
                                     rule.severity.value))  # fmt: skip
    return out


def _merge(city: dict[str, Category], layer: DistrictLayer, file: str) -> dict[str, Category]:
    merged = dict(city)
    problems = []
    for i, cat in enumerate(layer.categories):
        if cat.code in city:
            at: KeyPath = ("catalogue", "categories", i, "code")
            problems.append(ConfigProblem(file, None, at, "redefines a city code", cat.code))
        merged[cat.code] = cat
    for i, o in enumerate(layer.overrides):
        where = ("catalogue", "overrides", i)
        base = city.get(o.code)
        if base is None:
            problems.append(ConfigProblem(file, None, where, "overrides an unknown code", o.code))
        elif o.time_limit_min > base.time_limit_min:
            msg = f"may only tighten the city limit of {base.time_limit_min} min"
            problems.append(ConfigProblem(file, None, where, msg, o.time_limit_min))
        else:
            merged[o.code] = base.model_copy(update={"time_limit_min": o.time_limit_min})
    if problems:
        raise ConfigError(problems)
    return merged


def load_catalogue(root: Path | str) -> Catalogue:
    layers = {p: load_model(CatalogueFile, p).catalogue for p in iter_yaml_files(Path(root))}
    cities = [layer for layer in layers.values() if isinstance(layer, CityLayer)]
    if len(cities) != 1:
        raise ConfigError([ConfigProblem(str(root), None, (), "needs exactly one city layer")])
    city = {c.code: c for c in cities[0].categories}
    districts = {
        layer.district: _merge(city, layer, str(path))
        for path, layer in layers.items()
        if isinstance(layer, DistrictLayer)
    }
    return Catalogue(city, districts)


def default_catalogue_dir() -> Path:
    """The catalogue layers gridwatch ships (package data, wherever gridwatch is installed)."""
    return firmware(CATALOGUE)
