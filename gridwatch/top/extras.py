"""Which of gridwatch's extras (pyproject.toml) this installation lacks.

A gateway installs ``gridwatch[edge]``, the centre ``gridwatch[central]`` (README "Install"). A
command whose extra is missing is refused before it starts, in one line that says what to
install, instead of a traceback from deep inside an import (or, for ``gridwatch demo``, three
processes that fail one by one). The truth is the installed package's own metadata, the
``Requires-Dist`` lines pip and uv installed from, so the extras are written down once, in
pyproject.toml.
"""

from __future__ import annotations

import importlib.metadata
import re
from collections.abc import Callable, Iterable, Sequence

DIST = "gridwatch"

# `sqlalchemy[asyncio]>=2.0; extra == "central"` -> ("sqlalchemy", "asyncio", "central"); a line
# with another marker (none in pyproject.toml) does not match and is not checked
_REQUIREMENT = re.compile(
    r"""^\s*(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[(?P<extras>[^\]]*)\])?[^;]*"""
    r"""(?:;\s*extra\s*==\s*["'](?P<extra>[^"']+)["'])?\s*$"""
)


def lacking(extra: str, requires: Sequence[str], installed: Callable[[str], bool]) -> list[str]:
    """The distributions ``extra`` needs that are not installed, from ``requires`` (the package's
    ``Requires-Dist`` lines); an extra may name others of the same package (``gridwatch[metrics]``).
    Pure: ``installed`` answers whether a distribution is there."""
    wanted: list[str] = []
    seen: set[str] = set()

    def walk(name: str) -> None:
        if name in seen:
            return
        seen.add(name)
        for line in requires:
            m = _REQUIREMENT.match(line)
            if m is None or m["extra"] != name:
                continue
            if m["name"] == DIST:
                for inner in (m["extras"] or "").split(","):
                    walk(inner.strip())
            elif m["name"] not in wanted:
                wanted.append(m["name"])

    walk(extra)
    return [name for name in wanted if not installed(name)]


def missing_extras(extras: Iterable[str]) -> list[str]:
    """Those of ``extras`` this installation lacks a distribution of. Run from a source tree that
    was never installed there is no metadata to read: nothing is reported, and an import fails as
    it would."""
    try:
        requires = importlib.metadata.requires(DIST) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    return [extra for extra in extras if lacking(extra, requires, _installed)]


def _installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True
