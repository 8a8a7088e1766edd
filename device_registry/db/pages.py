"""A page of a list as the store reads it: rows already in the view's shape, the count of all
matching rows, and the sort key to continue after (``http/paging.py`` turns it into a cursor)."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

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


T = TypeVar("T")


def sliced(
    items: Sequence[T], keys: Sequence[Key], after: Key | None, limit: int | None
) -> tuple[list[T], Key | None]:
    """The page of ``items`` (sorted, ``keys`` their unique sort keys) after the key ``after``,
    and the key to continue after (None: the last page): a list judged in memory, paged as the
    tables are. ``limit`` None: all the rest."""
    first = 0 if after is None else bisect.bisect_right(keys, _comparable(after), key=_comparable)
    end = len(items) if limit is None else first + limit
    more = end < len(items)
    return list(items[first:end]), (keys[end - 1] if more else None)


def _comparable(key: Key) -> tuple[tuple[bool, str | int], ...]:
    # None sorts first and never meets a str or int in a comparison
    return tuple((part is not None, part if part is not None else 0) for part in key)
