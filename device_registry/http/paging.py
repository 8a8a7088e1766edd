"""Pages of a list endpoint: the opaque cursor, the ``Link`` to the next page and the count of
matching rows (docs/registry.md, "Lists and pages").

A page is a keyset page: the cursor holds the sort key of the last row served, and the next page
starts after it. A row that is there from the first page to the last is served exactly once,
whatever is inserted or removed meanwhile (an offset would repeat or skip rows), and page 500
costs what page 1 costs. The cursor names its list, so a cursor of the alert list given to the
device list is refused rather than misread; it is base64url JSON, opaque to clients (they follow
``Link``) but readable in a log.

A page answers with its rows as a JSON array, ``X-Total-Count`` (rows matching the filters on
all pages) and, when there is more, ``Link: <next>; rel="next"`` (the same request, relative to
it, with ``after`` set). The first page counts; the cursor carries that count to the pages after
it, so walking a list of 100,000 devices counts them once, not once per page (the count is the
first page's: rows added while walking are served but not counted).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from device_registry.db.pages import Key, Page
from device_registry.errors import Invalid
from device_registry.http.routing import json_reply

HEADERS = (
    ("X-Total-Count", "How many rows match the filters, on all pages (as counted for the first "
     "page)."),
    ("Link", 'The next page: `<url>; rel="next"` (relative to this request); absent on the last.'),
)  # fmt: skip
"""The headers a page answers with, as the OpenAPI document describes them."""


@dataclass(frozen=True)
class Start:
    """Where a page starts: after the row with this key; ``total`` as the first page counted."""

    key: Key
    total: int


def cursor(lst: str, key: Key, total: int) -> str:
    raw = json.dumps([lst, total, *key], separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def after(value: str | None, lst: str, shape: Sequence[type]) -> Start | None:
    """Where a cursor of list ``lst`` starts; ``shape``: the type of each part of the key. A
    cursor this list did not give is ``Invalid`` (422) naming ``after``."""
    if value is None:
        return None
    try:
        found = json.loads(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)))
    except (binascii.Error, ValueError):
        found = None
    if (
        isinstance(found, list)
        and found[:1] == [lst]
        and len(found) == len(shape) + 2
        and type(found[1]) is int
        and found[1] >= 0
        and all(type(part) is t for part, t in zip(found[2:], shape, strict=True))
    ):
        return Start(tuple(found[2:]), found[1])
    why = (f"not a cursor of this list ({lst}): follow the Link header of the previous page, "
           "or start again without after")  # fmt: skip
    raise Invalid([("after", why)], "the query string")


def reply(request: web.Request, lst: str, page: Page) -> web.Response:
    """The page as the list endpoint answers it: rows, ``X-Total-Count`` and ``Link``."""
    return reply_with(request, lst, page.rows, page.total, page.next)


def reply_with(
    request: web.Request, lst: str, body: Any, total: int, nxt: Key | None
) -> web.Response:
    """``body`` (the page's rows, or a report whose list is paged) with the page's headers."""
    headers = {"X-Total-Count": str(total)}
    if nxt is not None:
        # the same query with ``after`` for the next page (an ``offset`` would skip rows again)
        query = {k: v for k, v in request.rel_url.query.items() if k not in ("after", "offset")}
        url = request.rel_url.with_query({**query, "after": cursor(lst, nxt, total)})
        headers["Link"] = f'<{url}>; rel="next"'
    return json_reply(body, headers=headers)
