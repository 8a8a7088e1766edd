"""Xuhui district (徐汇区, 310104) as the district simulator lays gateways over it.

The simulator's own small table, until the Xuhui place data lands in ``firmware_configs/``
(being written now): then the simulator should read it from there and this file goes. The codes
and names are the 12 streets and 1 town of /work/shared/domain-facts.md §6 (GB/T 10114 9-digit
codes, from the NBS statistical codes; confidence C there).

What is *not* a fact here, and says so:

- the grid cells are the simulator's labels (``310104003-G07``: street code, cell number), not
  the city's grid-cell codes, whose format is not confirmed (domain-facts §4);
- ``STORM_PATH``, the order in which the scripted storm crosses the streets (roughly south to
  north), is a scenario, not geography: a district replaces it with its own;
- no coordinates: the centroids in domain-facts are probably GCJ-02 and 田林 has none, so the
  simulated devices carry district, street and grid, and no lat/lon.
"""

from __future__ import annotations

from dataclasses import dataclass

DISTRICT = "310104"
"""徐汇区, the administrative code the simulated devices report as their district."""


@dataclass(frozen=True)
class Street:
    code: str
    """The 9-digit street or town code (GB/T 10114)."""
    name: str
    """As people in Xuhui write it."""


STREETS: tuple[Street, ...] = (
    Street("310104003", "天平路街道"),
    Street("310104004", "湖南路街道"),
    Street("310104007", "斜土路街道"),
    Street("310104008", "枫林路街道"),
    Street("310104010", "长桥街道"),
    Street("310104011", "田林街道"),
    Street("310104012", "虹梅路街道"),
    Street("310104013", "康健新村街道"),
    Street("310104014", "徐家汇街道"),
    Street("310104015", "凌云路街道"),
    Street("310104016", "龙华街道"),
    Street("310104017", "漕河泾街道"),
    Street("310104103", "华泾镇"),
)

STORM_PATH: tuple[str, ...] = (
    "310104103", "310104010", "310104015", "310104013", "310104012", "310104017", "310104011",
    "310104016", "310104008", "310104014", "310104003", "310104007", "310104004",
)  # fmt: skip
"""The street codes in the order the scripted storm reaches them (a scenario, see above)."""

CELLS_PER_STREET = 12
"""Grid cells the simulator spreads each street's gateways over."""


def grid_cell(street: Street, n: int) -> str:
    """The simulator's label of cell ``n`` (from 1) of ``street``."""
    return f"{street.code}-G{n:02d}"
