"""City components (部件): the 16-digit identifier a device may be attached to, and the three
departments of a component (主管 competent, 权属 owner, 养护 maintainer).

A component identifier (部件标识码) is 6 digits of the district's administrative code, the
4-digit class code (2-digit major + 2-digit minor class of GB/T 30428.2, e.g. 0103 雨水井盖
storm-water manhole cover) and a 6-digit serial: ``3101040103000001``. The layout is seen in
integrators' systems, not read in the standard itself (shared/domain-facts.md §2: secondary).

What is checked, pure and without the catalogue: the shape (16 digits), a district the places
data knows, a plausible class (a national component major 01-06, or a local extension major from
21; a minor class 01-99). Whether the minor class is in the city's list is the catalogue's
business, which a district extends.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from pydantic import BaseModel, Field

# the three departments and the CODE:NAME parser live in gridwatch/ground: the CLI uses them too
from gridwatch.ground.departments import DEPARTMENTS as DEPARTMENTS
from gridwatch.ground.departments import department_cell as department_cell

COMPONENT_ID_DIGITS = 16
NATIONAL_MAJORS = {"01": "公用设施", "02": "道路交通", "03": "市容环境", "04": "园林绿化",
                   "05": "房屋土地", "06": "其他设施"}  # fmt: skip
"""Component major classes of GB/T 30428.2 (numbering: integrators' tables)."""
LOCAL_MAJOR_FROM = 21
"""Local extension classes start here (e.g. 2115 泵站, pump station)."""


@dataclass(frozen=True)
class ComponentId:
    district: str
    class_code: str
    serial: str

    def __str__(self) -> str:
        return f"{self.district}{self.class_code}{self.serial}"


class ComponentIdError(ValueError):
    """A component id that is not one; the message says what is wrong, for an installer."""


def parse_component_id(text: str, districts: Mapping[str, str] | Collection[str]) -> ComponentId:
    """The parts of a component id, checked; ``districts``: the known district codes (with
    their names, when a mapping, to name them in the message)."""
    if len(text) != COMPONENT_ID_DIGITS or not text.isascii() or not text.isdigit():
        raise ComponentIdError(
            f"a component id is 16 digits: district 6 + class 4 + serial 6, e.g. "
            f"3101040103000001 (got {text!r}, {len(text)} characters)"
        )
    cid = ComponentId(text[:6], text[6:10], text[10:])
    if cid.district not in districts:
        known = ", ".join(f"{d} {districts[d]}" if isinstance(districts, Mapping) else d
                          for d in sorted(districts))  # fmt: skip
        raise ComponentIdError(f"its first 6 digits, {cid.district}, are not a district "
                               f"gridwatch knows (known: {known or 'none'})")  # fmt: skip
    problem = class_problem(cid.class_code)
    if problem:
        raise ComponentIdError(f"digits 7-10, {cid.class_code}, {problem}")
    return cid


def class_problem(code: str) -> str | None:
    """Why a 4-digit component class code is not plausible; None when it is."""
    major, minor = code[:2], code[2:]
    if major not in NATIONAL_MAJORS and int(major) < LOCAL_MAJOR_FROM:
        return (f"are not a component class: the major class {major} is neither national "
                f"(01-06) nor local (from {LOCAL_MAJOR_FROM})")  # fmt: skip
    if minor == "00":
        return "are not a component class: the minor class is 01-99, not 00"
    return None


def class_code(component_id: str | None) -> str | None:
    """The 4-digit class code of a stored component id (None: none attached)."""
    return component_id[6:10] if component_id and len(component_id) == 16 else None


class Department(BaseModel):
    """A department as component records name it: its code and its name."""

    code: str = Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_.-]+$",
                      description="The department's code, e.g. 310104SW01.")  # fmt: skip
    name: str = Field(default="", max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$",
                      description="Its name, e.g. 徐汇区水务局.")  # fmt: skip
