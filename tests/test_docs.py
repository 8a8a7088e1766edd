"""What the docs say, checked.

docs/security.md's role table says exactly what the registry enforces: every endpoint, every
role. Compared with ``EXPECTED`` of ``test_registry_auth.py``, the table written out there and
checked against the running app, so a route added or a role changed without the docs fails here.

Every MQTT topic filter the docs give is one a broker accepts (a wildcard is a whole level).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from device_registry.http.auth import Role
from tests.test_registry_auth import EXPECTED, PUBLIC

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"
ENDPOINT = re.compile(r"`(GET|POST|PATCH|PUT|DELETE) (/[^`]*)`")


def documented() -> dict[tuple[str, str], set[Role]]:
    """(method, path) -> roles, from the table under "What each role may do"."""
    section = DOC.read_text(encoding="utf-8").split("## What each role may do", 1)[1]
    section = section.split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    header = next(line for line in section.splitlines() if line.startswith("| endpoint"))
    columns = [Role(c.strip()) for c in header.strip("|").split("|")[1:]]
    table: dict[tuple[str, str], set[Role]] = {}
    for row in rows:
        first, *cells = [c.strip() for c in row.strip("|").split("|")]
        assert len(cells) == len(columns), row
        if all(c == "no token" for c in cells):
            roles = set(PUBLIC)
        else:
            assert set(cells) <= {"yes", ""}, row
            roles = {role for role, c in zip(columns, cells, strict=True) if c == "yes"}
        for method, path in ENDPOINT.findall(first):
            assert (method, path) not in table, f"{method} {path} is in two rows"
            table[(method, path)] = roles
    return table


def test_the_docs_role_table_is_the_enforced_one() -> None:
    docs = documented()
    assert sorted(EXPECTED.keys() - docs.keys()) == [], "endpoints the docs' table leaves out"
    assert sorted(docs.keys() - EXPECTED.keys()) == [], "endpoints the registry does not serve"
    wrong = {k: (sorted(docs[k]), sorted(v)) for k, v in EXPECTED.items() if docs[k] != v}
    assert wrong == {}, "(documented, enforced) roles differ"


FILTER = re.compile(r"`((?:gridwatch|P)/[^`\s]*[+#][^`\s]*)`")


def valid_filter(text: str) -> bool:
    """MQTT 5 4.7.1: ``#`` only alone and last, ``+`` only alone in its level."""
    levels = text.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            return False
        if "+" in level and level != "+":
            return False
    return True


@pytest.mark.parametrize(
    ("text", "valid"),
    [("gridwatch/platform/+/310104/#", True), ("P/gw/+/config/ack", True),
     ("gridwatch/platform/+/310104/FIRE-#", False), ("a/b+/c", False), ("a/#/b", False)],
)  # fmt: skip
def test_valid_filter(text: str, valid: bool) -> None:
    assert valid_filter(text) is valid


def test_every_topic_filter_in_the_docs_is_valid() -> None:
    found = {
        (doc.name, f)
        for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        for f in FILTER.findall(doc.read_text(encoding="utf-8"))
    }
    assert ("alerts.md", "gridwatch/platform/+/310104/#") in found
    assert sorted((d, f) for d, f in found if not valid_filter(f)) == []
