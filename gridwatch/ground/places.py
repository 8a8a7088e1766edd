"""A district's places as data: its streets and towns (街道 / 镇), its grid cells (单元网格) and
each cell's area class, read from a YAML file a district replaces (``firmware_configs/places``).

The codes follow the national administrative divisions: a district (县级) has a 6-digit code
(GB/T 2260, e.g. ``310104`` 徐汇区), a street or town a 9-digit one (GB/T 10114: the district's
six and three more, e.g. ``310104003`` 天平路街道). A grid cell's code is, by default, the 15
digits of Beijing's local standard (DB11): district 6 + street/town 3 + community 3 + serial 3.
The national format (GB/T 30428.1, CJ/T 213) was not found, so the lengths are data
(``grid_format``), not code: a district whose city numbers its cells otherwise says so in its file.

A cell's area class (A: core, B, C) picks the disposal time limit of a case; a place without a
known cell gets the file's ``default_area_class`` (B unless the file says otherwise).

Centroids are stored as given (Amap's, GCJ-02, the offset datum of Chinese web maps) and
converted to WGS-84 (``gridwatch.ground.geo``) where a position is used. The file records where
each kind of fact comes from and which are unconfirmed (``sources``).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, model_validator

from firmware_configs import PLACES
from gridwatch.ground.geo import gcj02_to_wgs84
from gridwatch.ground.profiles import Strict
from gridwatch.ground.shipped import firmware
from gridwatch.ground.yamlconf import (
    ConfigError,
    ConfigProblem,
    iter_yaml_files,
    load_model,
)

AreaClass = Literal["A", "B", "C"]
DEFAULT_AREA_CLASS: AreaClass = "B"
"""The area class of a place no grid cell of the places file covers."""

_DISTRICT = r"^\d{6}$"
_STREET = r"^\d{9}$"


class District(Strict):
    code: str = Field(pattern=_DISTRICT, description="6-digit administrative code (GB/T 2260).")
    zh: str = Field(min_length=1, max_length=64, description="Chinese name, e.g. 徐汇区.")
    en: str = Field(min_length=1, max_length=64, description="English name.")


class Street(Strict):
    """A street (街道) or town (镇) of the district."""

    code: str = Field(pattern=_STREET, description="9-digit code (GB/T 10114).")
    zh: str = Field(min_length=1, max_length=64, description="Chinese name, e.g. 天平路街道.")
    en: str = Field(min_length=1, max_length=64, description="English name (see sources.en).")
    kind: Literal["street", "town"] = Field(default="street", description="街道 or 镇.")
    centroid_gcj02: tuple[float, float] | None = Field(
        default=None, description="lon, lat as given by Chinese web maps (GCJ-02); null: none."
    )

    @property
    def centroid_wgs84(self) -> tuple[float, float] | None:
        """The centroid as a position (lon, lat, WGS-84): what a map or a crew is given."""
        if not self.centroid_gcj02:
            return None
        lon, lat = self.centroid_gcj02
        wgs_lat, wgs_lon = gcj02_to_wgs84(lat, lon)  # geo speaks (lat, lon), as maps are read
        return wgs_lon, wgs_lat


class GridFormat(Strict):
    """How many digits each part of a grid cell's code has, in this order."""

    district: int = Field(default=6, ge=1, le=12)
    street: int = Field(default=3, ge=1, le=6)
    community: int = Field(default=3, ge=0, le=6)
    serial: int = Field(default=3, ge=1, le=6)
    standard: str = Field(description="Where the format comes from, and whether it is confirmed.")

    @property
    def length(self) -> int:
        return self.district + self.street + self.community + self.serial


class GridCell(Strict):
    code: str = Field(pattern=r"^\d+$", max_length=24, description="The cell's code (grid_format).")
    area_class: AreaClass = Field(description="A: core area, B, C: disposal limits by class.")
    zh: str = Field(default="", max_length=64, description="A name people use for it.")
    roads: list[str] = Field(default_factory=list, description="Roads that cross it.")


class DistrictPlaces(Strict):
    district: District
    sources: dict[str, str] = Field(description="Where each kind of fact comes from; which are "
                                    "unconfirmed.")  # fmt: skip
    grid_format: GridFormat
    default_area_class: AreaClass = Field(default=DEFAULT_AREA_CLASS)
    streets: list[Street] = Field(min_length=1)
    grid_cells: list[GridCell] = Field(default_factory=list)

    @model_validator(mode="after")
    def _codes_agree(self) -> Self:
        code = self.district.code
        fmt = self.grid_format
        if fmt.district != len(code):
            raise ValueError(f"grid_format.district is {fmt.district} digits, but the district "
                             f"code {code} has {len(code)}")  # fmt: skip
        streets = [s.code for s in self.streets]
        for s in streets:
            if not s.startswith(code):
                raise ValueError(f"street {s} is not in district {code} (its first six digits)")
        _unique("street", streets)
        _unique("grid cell", [c.code for c in self.grid_cells])
        for cell in self.grid_cells:
            if len(cell.code) != fmt.length:
                raise ValueError(f"grid cell {cell.code} has {len(cell.code)} digits; "
                                 f"grid_format makes {fmt.length}")  # fmt: skip
            if cell.code[: len(streets[0])] not in streets:
                raise ValueError(f"grid cell {cell.code} is in no street of the file (its first "
                                 f"{len(streets[0])} digits)")  # fmt: skip
        return self

    @functools.cached_property
    def by_street(self) -> dict[str, Street]:
        """Streets by code and by Chinese name."""
        return {**{s.code: s for s in self.streets}, **{s.zh: s for s in self.streets}}

    @functools.cached_property
    def by_cell(self) -> dict[str, GridCell]:
        return {c.code: c for c in self.grid_cells}

    def street_of_cell(self, cell: str) -> Street | None:
        """The street a grid cell's code names (its district and street digits)."""
        if not cell.startswith(self.district.code) or len(cell) != self.grid_format.length:
            return None
        return self.by_street.get(cell[: self.grid_format.district + self.grid_format.street])


def _unique(what: str, codes: list[str]) -> None:
    twice = sorted({c for c in codes if codes.count(c) > 1})
    if twice:
        raise ValueError(f"{what} code{'s' * (len(twice) > 1)} listed twice: {', '.join(twice)}")


class PlacesFile(Strict):
    places: DistrictPlaces


def load_places(root: Path | str) -> dict[str, DistrictPlaces]:
    """Every district's places in a folder of places files, by district code."""
    found: dict[str, DistrictPlaces] = {}
    for path in iter_yaml_files(Path(root)):
        places = load_model(PlacesFile, path).places
        if places.district.code in found:
            raise ConfigError([ConfigProblem(str(path), None, ("places", "district", "code"),
                                             "a second file for this district",
                                             places.district.code)])  # fmt: skip
        found[places.district.code] = places
    return found


def default_places_dir() -> Path:
    """The places gridwatch ships (package data, wherever gridwatch is installed)."""
    return firmware(PLACES)


@functools.cache
def shipped_places() -> dict[str, DistrictPlaces]:
    """The shipped places, read once per process."""
    return load_places(default_places_dir())
