"""The departments of a city component (部件) as a person writes one: ``CODE:NAME``.

One parser for every side that takes it: the registry's CSV import (a cell) and the installer
CLI (``gridwatch device add --dept-owner CODE:NAME``), which must not import the registry.
"""

from __future__ import annotations

DEPARTMENTS = {"competent": "主管", "owner": "权属", "maintainer": "养护"}
"""The three departments of a component record (domain-facts §2: DeptCode1-3)."""


def department_cell(text: str) -> dict[str, str]:
    """A department written as ``CODE:NAME`` (or ``CODE`` alone); a Chinese keyboard's
    full-width colon is taken too."""
    code, _, name = text.replace("：", ":").partition(":")
    return {"code": code.strip(), "name": name.strip()}
