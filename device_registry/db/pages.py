"""A page of a list as the store reads it: rows already in the view's shape, the count of all
matching rows, and the sort key to continue after (``http/paging.py`` turns it into a cursor)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Key = tuple[str | int | None, ...]
"""A row's sort key, as its list orders it (the device list: the device's id)."""


@dataclass(frozen=True)
class Page:
    rows: list[dict[str, Any]]
    total: int
    """Rows matching the filters, on all pages."""
    next: Key | None = None
    """The key of the last row when more follow; None: the last page."""


def like(text: str) -> str:
    """``%text%`` for a LIKE with ``\\`` as escape: a ``%`` or ``_`` typed is matched as itself."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
