"""The device list a page at a time (``http/paging.py``), on SQLite and PostgreSQL: a cursor walk
serves every device once while devices are added between pages, filters combine, ``limit`` is
bounded, a bad cursor is a problem naming ``after``; and the rows written straight from column
queries are what ``DeviceView`` (and so the OpenAPI document) says."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from pydantic import TypeAdapter
from sqlalchemy import insert, update

from device_registry import RegistryStore
from device_registry.db.pages import sliced
from device_registry.db.tables import (
    Alert,
    Device,
    DeviceInfo,
    District,
    Gateway,
    LatestReading,
    Site,
)
from device_registry.errors import Invalid
from device_registry.health.views import HealthSummary
from device_registry.http import paging
from device_registry.http.app import build_app, serving
from device_registry.inventory.views import DeviceView
from tests._central_helpers import now_ms
from tests.conftest import ADMIN_TOKEN

T0 = 1_764_000_000_000

# the field: (site id, district, street, grid, site lat, site lon)
SITES = [
    (1, "310104", "tianping", "310104003001001", 31.2, 121.4),
    (2, "310104", "tianping", "310104003001002", None, None),
    (3, "310104", "xujiahui", "310104011002001", 31.19, 121.43),
    (4, "310101", "nanjing", "310101002001001", None, None),
]
PROFILES = ["water-level-ultrasonic", "smoke-detector-modbus", "gas-detector"]


def spec(i: int) -> dict[str, Any]:
    """Device number ``i`` of the field: 3 gateways, 4 sites, 3 profiles, every 7th one's
    profile only from its gateway's birth, every 11th retired."""
    return {
        "id": f"gw{i % 3}:dev-{i:03d}", "gateway_id": f"gw{i % 3}", "name": f"dev-{i:03d}",
        "site_id": SITES[i % 4][0], "status": "online" if i % 5 else "stale",
        "first_seen": T0, "last_seen": T0 + i, "registered_at": T0,
        "retired_at": T0 if i % 11 == 10 else None,
        "profile": None if i % 7 == 0 else PROFILES[i % 3],
        "bus": "cabinet", "unit_id": i % 247 + 1, "address": "", "firmware": "1.0",
    }  # fmt: skip


N = 60


async def seed(store: RegistryStore, n: int = N) -> None:
    async with store.transaction() as s:
        await s.execute(insert(District), [{"id": d, "name": ""} for d in ("310104", "310101")])
        await s.execute(insert(Site), [
            {"id": i, "district_id": d, "street": st, "grid": g, "lat": la, "lon": lo}
            for i, d, st, g, la, lo in SITES
        ])  # fmt: skip
        await s.execute(insert(Gateway), [
            {"id": f"gw{g}", "first_seen": T0, "last_seen": T0, "online": True, "session": 1,
             "software": "", "config_version": 1, "name": ""} for g in range(3)
        ])  # fmt: skip
        await add(s, range(n))


async def add(s: Any, numbers: range) -> None:
    rows = [spec(i) for i in numbers]
    await s.execute(insert(Device), rows)
    born = [{"device_id": r["id"], "profile": "gas-detector", "updated_at": T0}
            for r in rows if r["profile"] is None]  # fmt: skip
    if born:
        await s.execute(insert(DeviceInfo), born)
    await s.execute(insert(LatestReading), [
        {"device_id": r["id"], "point": "level", "value": 1.25, "unit": "m", "quality": "good",
         "ts": T0, "historical": False} for r in rows
    ])  # fmt: skip


def expected(n: int = N, **f: Any) -> list[str]:
    """The ids the device list should give for filters ``f``, from the specs, in id order."""
    out = []
    for i in range(n):
        d = spec(i)
        site = SITES[i % 4]
        shown = d["profile"] or "gas-detector"
        checks = {
            "gateway": d["gateway_id"], "district": site[1], "street": site[2], "grid": site[3],
            "profile": shown, "status": d["status"],
        }  # fmt: skip
        if any(checks[k] != v for k, v in f.items() if k not in ("retired", "q")):
            continue
        if f.get("retired", "false") != "any" and (d["retired_at"] is not None) != (
            f.get("retired") == "true"
        ):
            continue
        if "q" in f and f["q"].lower() not in d["id"].lower():
            continue
        out.append(d["id"])
    return sorted(out)


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession
    store: RegistryStore

    async def page(self, path: str, status: int = 200) -> tuple[Any, aiohttp.ClientResponse]:
        async with self.http.get(self.url + path) as r:
            body = await r.json()
            assert r.status == status, body
            return body, r


@pytest.fixture
async def api(registry_url: str) -> AsyncIterator[Api]:
    store = await RegistryStore.open(registry_url)
    await seed(store)
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        async with (
            serving(build_app(store=store), "127.0.0.1", 0) as base,
            aiohttp.ClientSession(headers=headers) as http,
        ):
            yield Api(base, http, store)
    finally:
        await store.close()


NEXT = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')


async def walk(api: Api, path: str, between: Any = None) -> tuple[list[str], list[int]]:
    """Every page of ``path`` by its Link headers: the ids served, and each page's total."""
    ids: list[str] = []
    totals: list[int] = []
    for n in range(1000):  # bounded: a Link loop fails the test instead of hanging it
        rows, r = await api.page(path)
        ids += [d["id"] for d in rows]
        totals.append(int(r.headers["X-Total-Count"]))
        link = r.headers.get("Link")
        if link is None:
            return ids, totals
        found = NEXT.match(link)
        assert found, link
        path = found["url"]
        if between is not None:
            await between(n)
    raise AssertionError("the Link headers never ended")


async def test_a_cursor_walk_serves_every_device_once_while_devices_are_added(api: Api) -> None:
    first = expected()
    added: list[str] = []

    async def insert_between(n: int) -> None:
        # before the cursor (never served), after it (served when reached), on each page
        async with api.store.transaction() as s:
            numbers = range(1000 + 2 * n, 1002 + 2 * n)
            await add(s, numbers)
        added.extend(spec(i)["id"] for i in numbers if spec(i)["retired_at"] is None)

    ids, totals = await walk(api, "/api/v1/devices?limit=7", insert_between)
    assert len(ids) == len(set(ids)), "a device was served twice"
    assert set(first) <= set(ids), set(first) - set(ids)  # none there all along was skipped
    assert set(ids) - set(first) <= set(added)
    assert ids == sorted(ids)
    # every page says the count as the first page made it
    assert totals == [len(first)] * len(totals)
    # and a fresh walk counts again, and sees all
    again, totals = await walk(api, "/api/v1/devices?limit=500")
    assert again == sorted(first + added) and totals == [len(again)]


FILTERS: list[dict[str, str]] = [
    {"gateway": "gw1"},
    {"district": "310104"},
    {"district": "310104", "street": "tianping"},
    {"grid": "310104003001002"},
    {"district": "310101", "profile": "gas-detector"},  # the birth's profile counts
    {"profile": "smoke-detector-modbus", "status": "stale"},
    {"gateway": "gw2", "district": "310104", "street": "xujiahui"},
    {"q": "DEV-01"},  # any case
    {"q": "gw0:dev-0", "retired": "any"},
    {"retired": "true"},
    {"q": "%"},  # a LIKE wildcard typed is matched as itself: nothing has one
    {"district": "nowhere"},
]


@pytest.mark.parametrize("f", FILTERS, ids=lambda f: "&".join(f"{k}={v}" for k, v in f.items()))
async def test_filters_combine_and_each_page_walk_gives_them(api: Api, f: dict[str, str]) -> None:
    query = "&".join(f"{k}={v.replace('%', '%25')}" for k, v in f.items())
    want = expected(**f)
    ids, totals = await walk(api, f"/api/v1/devices?{query}&limit=4")
    assert ids == want
    assert set(totals) == {len(want)}


async def test_limit_is_bounded_and_defaults_to_1000(api: Api) -> None:
    async with api.store.transaction() as s:
        await add(s, range(N, 1010))
    rows, r = await api.page("/api/v1/devices?retired=any")
    assert len(rows) == 1000 and r.headers["X-Total-Count"] == "1010" and "Link" in r.headers
    rows, r = await api.page("/api/v1/devices?retired=any&limit=10000")
    assert len(rows) == 1010 and "Link" not in r.headers
    for bad in ("0", "10001", "-1", "many"):
        problem, _ = await api.page(f"/api/v1/devices?limit={bad}", 422)
        assert [e["loc"] for e in problem["errors"]] == ["limit"], problem


def _cursor(*parts: Any) -> str:
    import base64
    import json

    raw = json.dumps(list(parts)).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


BAD_CURSORS = [
    "not-a-cursor",
    "%%%",
    _cursor("alerts", 3, "gw0:dev-001"),  # another list's
    _cursor("devices", 3),  # no key
    _cursor("devices", -1, "gw0:dev-001"),
    _cursor("devices", "3", "gw0:dev-001"),
    _cursor("devices", 3, 17),
    _cursor({"devices": 1}),
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
async def test_a_bad_cursor_is_a_problem_naming_after(api: Api, cursor: str) -> None:
    problem, r = await api.page(f"/api/v1/devices?after={cursor}", 422)
    assert r.content_type == "application/problem+json"
    assert [e["loc"] for e in problem["errors"]] == ["after"], problem
    assert "Link header" in problem["detail"]


async def test_after_and_offset_exclude_each_other(api: Api) -> None:
    start = paging.cursor("devices", ("gw0:dev-003",), 10)
    problem, _ = await api.page(f"/api/v1/devices?after={start}&offset=5", 422)
    assert "after and offset" in problem["detail"]


# (cursor, list, key shape, the start it gives; None: Invalid)
CURSORS: list[tuple[str, str, tuple[type, ...], paging.Start | None]] = [
    (paging.cursor("devices", ("a:b",), 5), "devices", (str,), paging.Start(("a:b",), 5)),
    (paging.cursor("alerts", (3, "x"), 0), "alerts", (int, str), paging.Start((3, "x"), 0)),
    (paging.cursor("alerts", (3, "x"), 0), "devices", (int, str), None),
    (paging.cursor("devices", ("徐汇:1",), 2), "devices", (str,), paging.Start(("徐汇:1",), 2)),
    (paging.cursor("devices", (True,), 2), "devices", (int,), None),
    ("", "devices", (str,), None),
]


@pytest.mark.parametrize(("value", "lst", "shape", "start"), CURSORS)
def test_cursors_name_their_list_and_key(
    value: str, lst: str, shape: tuple[type, ...], start: paging.Start | None
) -> None:
    if start is None:
        with pytest.raises(Invalid) as caught:
            paging.after(value, lst, shape)
        assert [loc for loc, _ in caught.value.problems] == ["after"]
    else:
        assert paging.after(value, lst, shape) == start


async def test_rows_are_device_views_and_the_document_says_so(api: Api) -> None:
    async with api.store.transaction() as s:
        # one device with everything set: its own coordinates, labels, health, an alert
        await s.execute(
            update(Device).where(Device.id == "gw1:dev-001").values(
                lat=31.21, lon=121.44, labels={"crew": "7"}, install_date="2026-11-20",
                health={"success_rate": 0.5}, address="a/1",
            )
        )  # fmt: skip
        await s.execute(insert(Alert), [{
            "alert_id": "gw1:a1", "gateway_id": "gw1", "device_id": "gw1:dev-001",
            "point": "level", "state": "raised", "rule": "r", "category": "0406",
            "severity": "major", "location": {}, "value": 2.5, "unit": "m", "message": "high",
            "raised_at": T0, "updated_at": T0,
        }])  # fmt: skip
    rows, _ = await api.page("/api/v1/devices?retired=any&limit=10000")
    views = TypeAdapter(list[DeviceView]).validate_python(rows)
    # what the view would write is what was written: no field missing, none extra
    assert [v.model_dump(mode="json") for v in views] == rows
    one, _ = await api.page("/api/v1/devices/gw1:dev-001")
    assert DeviceView.model_validate(one).model_dump(mode="json") == one
    assert {k: one[k] for k in ("district", "street", "grid", "lat", "lon", "coordinates",
                                "labels", "profile", "registered", "retired")} == {
        "district": "310104", "street": "tianping", "grid": "310104003001002", "lat": 31.21,
        "lon": 121.44, "coordinates": "device", "labels": {"crew": "7"},
        "profile": "smoke-detector-modbus", "registered": True, "retired": False,
    }  # fmt: skip
    assert [a["alert_id"] for a in one["active_alerts"]] == ["gw1:a1"]
    # a device without coordinates of its own stands at its site's; one with neither: none
    by_id = {d["id"]: d for d in rows}
    assert (by_id["gw0:dev-000"]["lat"], by_id["gw0:dev-000"]["coordinates"]) == (31.2, "site")
    assert (by_id["gw2:dev-005"]["lat"], by_id["gw2:dev-005"]["coordinates"]) == (None, "none")
    assert by_id["gw0:dev-000"]["profile"] == "gas-detector"  # from its gateway's birth
    assert by_id["gw0:dev-000"]["values"]["level"] == {
        "value": 1.25, "unit": "m", "quality": "good", "ts": T0, "historical": False,
        "decimals": None,
    }  # fmt: skip

    spec_doc, _ = await api.page("/api/v1/openapi.json")
    ok = spec_doc["paths"]["/api/v1/devices"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"] == {
        "type": "array", "items": {"$ref": "#/components/schemas/DeviceView"},
    }  # fmt: skip
    assert set(ok["headers"]) == {"Link", "X-Total-Count"}
    params = {p["name"] for p in spec_doc["paths"]["/api/v1/devices"]["get"]["parameters"]}
    assert {"limit", "after", "district", "street", "grid", "profile", "q"} <= params
    one_doc = spec_doc["paths"]["/api/v1/devices/{id}"]["get"]["responses"]["200"]
    assert one_doc["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/DeviceView"
    }


# ---- the health report's device list -----------------------------------------------------------


async def fresh(api: Api, numbers: list[int]) -> int:
    """Make these devices report now (the others stay silent since T0); returns now."""
    now = now_ms()
    async with api.store.transaction() as s:
        await s.execute(update(Device).where(Device.id.in_([spec(i)["id"] for i in numbers]))
                        .values(last_seen=now))  # fmt: skip
    return now


async def health_walk(api: Api, query: str) -> tuple[list[dict[str, Any]], list[Any], list[int]]:
    """Every page of the health report: its devices in order, each page's summary, totals."""
    path = f"/api/v1/health?{query}"
    devices: list[dict[str, Any]] = []
    summaries, totals = [], []
    for _ in range(1000):
        body, r = await api.page(path)
        devices += body["devices"]
        summaries.append(body["summary"])
        totals.append(int(r.headers["X-Total-Count"]))
        link = r.headers.get("Link")
        if link is None:
            return devices, summaries, totals
        found = NEXT.match(link)
        assert found, link
        path = found["url"]
    raise AssertionError("the Link headers never ended")


HEALTH_FILTERS = ["", "health=unhealthy", "health=healthy", "street=xujiahui", "q=GW1:",
                  "district=310104&health=healthy", "grid=310104003001002&q=dev-0"]  # fmt: skip


@pytest.mark.parametrize("query", HEALTH_FILTERS)
async def test_the_health_device_list_pages_unhealthy_first(api: Api, query: str) -> None:
    await fresh(api, [i for i in range(N) if i % 2 == 0])
    everything, _ = await api.page(f"/api/v1/health?{query}&limit=10000")
    want = everything["devices"]
    devices, summaries, totals = await health_walk(api, f"{query}&limit=4")
    assert [d["id"] for d in devices] == [d["id"] for d in want]
    assert len({d["id"] for d in devices}) == len(devices)
    assert set(totals) == {len(want)}
    # the summary counts the whole field the filters match, on every page
    assert all(s == everything["summary"] for s in summaries)
    # unhealthy first: once a healthy device is listed, no unhealthy one follows
    flags = [d["healthy"] for d in devices]
    assert flags == sorted(flags)
    words = dict(p.split("=") for p in query.split("&") if p)
    listed = [d for d in expected(**{k: v for k, v in words.items() if k != "health"})]
    healthy = {spec(i)["id"] for i in range(N) if i % 2 == 0}
    if words.get("health") == "healthy":
        listed = [i for i in listed if i in healthy]
    elif words.get("health") == "unhealthy":
        listed = [i for i in listed if i not in healthy]
    assert sorted(d["id"] for d in devices) == sorted(listed)


async def test_a_device_list_cursor_is_refused_by_the_health_list(api: Api) -> None:
    _, r = await api.page("/api/v1/devices?limit=2")
    link = NEXT.match(r.headers["Link"])
    assert link
    cursor = link["url"].split("after=")[1]
    problem, _ = await api.page(f"/api/v1/health?after={cursor}", 422)
    assert [e["loc"] for e in problem["errors"]] == ["after"]


Key2 = tuple[int, str]
# (sorted keys, start after, limit, the page, the key to go on after)
SLICES: list[tuple[list[Key2], Key2 | None, int, list[Key2], Key2 | None]] = [
    ([(0, "a"), (0, "b"), (1, "a")], None, 2, [(0, "a"), (0, "b")], (0, "b")),
    ([(0, "a"), (0, "b"), (1, "a")], (0, "b"), 2, [(1, "a")], None),
    ([(0, "a"), (0, "b"), (1, "a")], (0, "a"), 2, [(0, "b"), (1, "a")], None),
    # the row a cursor names is gone: the page starts at the next one
    ([(0, "a"), (1, "a")], (0, "b"), 5, [(1, "a")], None),
    ([(0, "a")], (9, "z"), 5, [], None),
    ([], None, 3, [], None),
]


@pytest.mark.parametrize(("keys", "start", "limit", "page", "nxt"), SLICES)
def test_a_list_judged_in_memory_pages_by_key(
    keys: list[tuple[int, str]], start: tuple[int, str] | None, limit: int,
    page: list[tuple[int, str]], nxt: tuple[int, str] | None,
) -> None:  # fmt: skip
    assert sliced(keys, keys, start, limit) == (page, nxt)


# ---- the alert list (operations stage) ---------------------------------------------------------


def alert_spec(i: int, stage: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Alert number ``i``: raised in threes at the same ms (ties ordered by id), in 2 grid
    cells of 2 districts, on the device of the same number."""
    d = spec(i % N)
    district, grid = SITES[i % 4][1], SITES[i % 4][3]
    alert = {
        "alert_id": f"{d['gateway_id']}:al-{i:03d}", "gateway_id": d["gateway_id"],
        "device_id": d["id"], "point": "level", "state": "raised", "rule": "r",
        "category": "0406", "severity": "major", "district": district, "grid": grid,
        "location": {"district": district, "grid": grid}, "value": 2.5, "unit": "m",
        "message": "high", "raised_at": T0 + 1000 * (i // 3), "updated_at": T0 + 1000 * (i // 3),
    }  # fmt: skip
    ops = {"alert_id": alert["alert_id"], "stage": stage, "incident_id": f"inc-{i}"}
    return alert, ops


async def add_alerts(store: RegistryStore, numbers: range) -> None:
    from device_registry.alerts.store import AlertFilter
    from device_registry.db.tables import AlertOps

    stage = sorted(AlertFilter().stages)[0]  # a stage the list shows by default
    specs = [alert_spec(i, stage) for i in numbers]
    async with store.transaction() as s:
        await s.execute(insert(Alert), [a for a, _ in specs])
        await s.execute(insert(AlertOps), [o for _, o in specs])


def alert_order(numbers: range, **f: str) -> list[str]:
    """The ids the alert list should give, newest raised first, ties by id descending."""
    chosen = []
    for i in numbers:
        a, _ = alert_spec(i, "")
        if (
            f.get("grid", a["grid"]) != a["grid"]
            or f.get("district", a["district"]) != a["district"]
        ):
            continue
        if "q" in f and f["q"].lower() not in (a["alert_id"] + " " + a["device_id"]).lower():
            continue
        chosen.append(a)
    return [a["alert_id"] for a in sorted(chosen, key=lambda a: (a["raised_at"], a["alert_id"]),
                                          reverse=True)]  # fmt: skip


async def test_the_alert_list_walks_newest_first_once_while_alerts_arrive(api: Api) -> None:
    await add_alerts(api.store, range(30))
    first = alert_order(range(30))
    arrived = iter(range(100, 200, 2))

    async def more(n: int) -> None:
        i = next(arrived)
        await add_alerts(api.store, range(i, i + 2))  # newer than all: ahead of the cursor

    path = "/api/v1/alerts/lifecycle?limit=4"
    ids: list[str] = []
    totals: list[int] = []
    for n in range(100):
        rows, r = await api.page(path)
        ids += [a["alert_id"] for a in rows]
        totals.append(int(r.headers["X-Total-Count"]))
        link = r.headers.get("Link")
        if link is None:
            break
        found = NEXT.match(link)
        assert found, link
        path = found["url"]
        await more(n)
    assert ids == first  # once each, in order; those raised since the first page come next walk
    assert set(totals) == {30}


ALERT_FILTERS = [{"grid": "310104003001002"}, {"district": "310101"}, {"q": "GW2:AL-01"},
                 {"district": "310104", "q": "dev-00"}, {"grid": "nowhere"}]  # fmt: skip


@pytest.mark.parametrize("f", ALERT_FILTERS, ids=str)
async def test_alert_filters_combine_over_pages(api: Api, f: dict[str, str]) -> None:
    await add_alerts(api.store, range(30))
    query = "&".join(f"{k}={v}" for k, v in f.items())
    path = f"/api/v1/alerts/lifecycle?{query}&limit=3"
    ids: list[str] = []
    for _ in range(100):
        rows, r = await api.page(path)
        ids += [a["alert_id"] for a in rows]
        assert r.headers["X-Total-Count"] == str(len(alert_order(range(30), **f)))
        found = NEXT.match(r.headers.get("Link", ""))
        if found is None:
            break
        path = found["url"]
    assert ids == alert_order(range(30), **f)
    problem, _ = await api.page("/api/v1/alerts/lifecycle?after=" + _cursor("alerts", 1, 2), 422)
    assert [e["loc"] for e in problem["errors"]] == ["after"]


async def test_a_judged_field_is_reused_for_as_long_as_judging_it_took() -> None:
    from device_registry.health.store import Judged, Judgements

    clock = [100.0]
    made: list[Judged] = []
    gate = asyncio.Event()

    async def judge() -> Judged:
        await gate.wait()
        clock[0] += 3.0  # judging took 3 s
        made.append(Judged([], [], [], HealthSummary(devices=len(made), devices_unhealthy=0,
                                                     gateways=0, gateways_unhealthy=0), None))  # fmt: skip
        return made[-1]

    j = Judgements(clock=lambda: clock[0])
    # fifty requests at once: one judging, all get it
    waiting = [asyncio.create_task(j.get("all", judge)) for _ in range(50)]
    await asyncio.sleep(0)
    gate.set()
    got = await asyncio.gather(*waiting)
    assert len(made) == 1 and all(g is made[0] for g in got)
    clock[0] += 2.9  # still fresh: as old as judging took, less a little
    assert await j.get("all", judge) is made[0]
    assert await j.get("district", judge) is made[1]  # another filter: judged apart
    clock[0] += 3.2  # "all" is now older than its judging took: judged again, and meanwhile
    assert await j.get("all", judge) is made[0]  # the last one is served (slow to judge)
    for _ in range(5):  # the judging task runs
        await asyncio.sleep(0)
    assert await j.get("all", judge) is made[2]
    clock[0] += 700  # not asked for 10 minutes: forgotten, the next request waits for a new one
    assert await j.get("all", judge) is made[3]


async def test_a_field_quick_to_judge_is_judged_again_while_the_request_waits() -> None:
    from device_registry.health.store import Judged, Judgements

    clock = [0.0]
    made: list[Judged] = []

    async def judge() -> Judged:
        clock[0] += 0.01  # a small field
        made.append(Judged([], [], [], HealthSummary(devices=0, devices_unhealthy=0, gateways=0,
                                                     gateways_unhealthy=0), None))  # fmt: skip
        return made[-1]

    j = Judgements(clock=lambda: clock[0])
    assert await j.get("all", judge) is made[0]
    clock[0] += 0.02  # a change, then the next request: it sees a new judgement, not the last
    assert await j.get("all", judge) is made[1]
