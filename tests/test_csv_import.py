"""Big CSV imports, on SQLite and PostgreSQL: 50,000 rows in seconds, all or nothing, without
holding up ingest, a bad row far down reported by its line, a race lost cleanly, a stop on
SIGTERM that does not wait for the import; the pure reading and judgement of rows as tables
(every problem in one round, two devices at one bus slot, line numbers as an editor shows them);
the sample file shipped for installers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from sqlalchemy import func, select

from device_registry import RegistryStore
from device_registry.db.tables import Device, Gateway
from device_registry.errors import Conflict
from device_registry.http.app import build_app, serving
from device_registry.http.auth import SYSTEM, Role, TokenRequest, issue
from device_registry.http.limits import ServerLimits
from device_registry.ingest.changes import Changes, Seen
from device_registry.inventory import csvimport, routes
from device_registry.inventory.configgen import DeviceSpec
from device_registry.inventory.wiring import INSTALLERS, InstallerSettings
from firmware_configs import SAMPLES
from gridwatch.ground.contract import Location
from gridwatch.ground.gatewayconf import default_profiles_dir
from gridwatch.ground.profiles import load_profiles
from gridwatch.ground.shipped import firmware

GATEWAYS = 50
BUSES = [{"type": "modbus_tcp", "id": f"b{i}", "host": "10.0.0.5", "timeout_s": 0.5}
         for i in range(5)]  # fmt: skip
HEADER = "gateway,id,profile,bus,unit_id,district,street,grid,install_date,firmware,labels"
CSV = {"Content-Type": "text/csv"}
MAX_INGEST_WAIT_S = 15.0


def big_csv(rows: int, bad_line: int | None = None) -> str:
    """``rows`` devices spread over the gateways; the row on ``bad_line`` names no profile that
    exists. About 110 bytes a row: 50,000 rows are ~5.5 MB, over the API's 1 MiB body limit."""
    out = [HEADER]
    for i in range(rows):
        profile = "no-such-profile" if i + 2 == bad_line else "water-level-ultrasonic"
        # each device of a gateway at its own bus and unit id: two at one would answer as one
        k = i // GATEWAYS
        out.append(f"gw{i % GATEWAYS:02d},wl-{i:05d},{profile},b{k % 5},{k // 5 % 247 + 1},310104,"
                   f"漕溪北路 {i % 40},310104017021{i % 25:03d},2026-11-20,1.2,crew={i % 9};lot=A")  # fmt: skip
    return "\n".join(out) + "\n"


@dataclass
class Central:
    url: str
    http: aiohttp.ClientSession
    store: RegistryStore
    app: Any

    async def post_csv(self, text: str | bytes, status: int) -> dict[str, Any]:
        data = text.encode() if isinstance(text, str) else text
        async with self.http.post(self.url + "/api/v1/devices/import", data=data,
                                  headers=CSV) as r:  # fmt: skip
            body = await r.text()
            assert r.status == status, body[:2000]
            result: dict[str, Any] = await r.json()
            return result

    async def registered(self, *, unregistered: bool = False) -> int:
        """Devices of the file (``wl-*``) registered, or written but not registered."""
        column = Device.registered_at
        cond = column.is_(None) if unregistered else column.is_not(None)
        async with self.store.transaction() as s:
            n = await s.scalar(select(func.count()).where(Device.name.like("wl-%"), cond))
        return int(n or 0)

    async def config_versions(self) -> set[int]:
        async with self.store.transaction() as s:
            return set(await s.scalars(select(Gateway.config_desired).where(
                Gateway.registered_at.is_not(None))))  # fmt: skip


async def _register_gateways(c: Central) -> None:
    for g in range(GATEWAYS):
        body = {"id": f"gw{g:02d}", "location": {"district": "310104"}, "buses": BUSES}
        async with c.http.post(c.url + "/api/v1/gateways", json=body) as r:
            assert r.status == 201, await r.text()


@pytest.fixture
async def central(registry_url: str) -> AsyncIterator[Central]:
    store = await RegistryStore.open(registry_url)
    token = (await issue(store, TokenRequest(name="anna", role=Role.INSTALLER), SYSTEM)).token
    app = build_app(store=store, installers=InstallerSettings())
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with (
            serving(app, "127.0.0.1", 0) as base,
            aiohttp.ClientSession(headers=headers, timeout=aiohttp.ClientTimeout(total=600)) as h,
        ):
            c = Central(base, h, store, app)
            await _register_gateways(c)
            yield c
    finally:
        await store.close()


async def _ingest_until(store: RegistryStore, done: asyncio.Event) -> list[float]:
    """Ingest commits, one every ~50 ms until ``done``: how long each one took."""
    waits: list[float] = []
    i = 0
    while not done.is_set():
        now = time.time_ns() // 1_000_000
        ch = Changes(now=now, seen_ids={uuid.uuid4().hex: Seen("gw-field")},
                     device_seen={("gw-field", f"s{i % 10}"): now})  # fmt: skip
        started = time.monotonic()
        await store.apply(ch)
        waits.append(time.monotonic() - started)
        i += 1
        with contextlib.suppress(TimeoutError):  # paced by the import's end, not slept through
            await asyncio.wait_for(done.wait(), 0.05)
    return waits


@pytest.mark.timeout(600)
async def test_50000_rows_import_while_ingest_goes_on(central: Central) -> None:
    text = big_csv(50_000)
    assert len(text) > 4 * 1024**2  # over the API's 1 MiB: the import has its own limit
    done = asyncio.Event()
    ingest = asyncio.create_task(_ingest_until(central.store, done))
    started = time.monotonic()
    try:
        result = await central.post_csv(text, 200)
    finally:
        done.set()
    took = time.monotonic() - started
    waits = await ingest
    assert result["imported"] == 50_000 and len(result["devices"]) == 50_000
    assert await central.registered() == 50_000
    assert await central.registered(unregistered=True) == 0
    assert await central.config_versions() == {2}  # one new version per gateway, not per row
    # ingest went on during the import, each commit waiting for a chunk (or the last, short
    # transaction) at most: before, one transaction held the database for the whole import
    # (minutes at this size). The bound is loose because this runs on shared 2-core machines:
    # at a load average of 10, ingest commits alone took up to 2-3 s with no import holding
    # anything; the last transaction (50,000 rows registered) takes ~0.3 s on an idle machine.
    # 5 s was missed at 6-9 s under the parallel fault tests and helpers' load; the import
    # takes 60 s and more, so 15 s still tells chunked commits from one long transaction
    assert len(waits) >= 5, (took, waits)
    assert max(waits) < MAX_INGEST_WAIT_S, (
        f"an ingest commit waited {max(waits):.2f}s (import {took:.1f}s)"
    )
    doc = await (await central.http.get(central.url + "/api/v1/gateways/gw07/config")).json()
    assert len(doc["devices"]) == 1_000 and doc["version"] == 2


@pytest.mark.timeout(600)
async def test_a_bad_row_at_line_40000_is_named_and_nothing_is_imported(central: Central) -> None:
    report = await central.post_csv(big_csv(40_000, bad_line=40_000), 422)
    assert "nothing imported" in report["detail"]
    assert report["errors"] == [
        {"loc": "line 40000 (gw48:wl-39998).profile",
         "msg": "unknown profile (got 'no-such-profile'); known profiles: camera-mqtt, "
                "gas-detector, manhole-tilt, ponding-depth, smoke-detector-modbus, smoke-detector-mqtt, "
                "water-level-pressure, water-level-ultrasonic"},
    ]  # fmt: skip
    assert await central.registered() == 0 and await central.registered(unregistered=True) == 0
    assert await central.config_versions() == {1}


async def test_a_change_racing_the_import_undoes_it(central: Central) -> None:
    """Judged, then a device registered on one of its gateways before the import commits: the
    import refuses (409) and takes back the rows it had written."""
    registry = central.app[INSTALLERS].registry
    parsed = csvimport.parse(big_csv(2_500))
    assert not parsed.bad
    plan = await registry.plan_import(parsed.good)
    assert plan.refused == []
    body = {"gateway": "gw03", "id": "racer", "profile": "water-level-ultrasonic", "bus": "b0"}
    async with central.http.post(central.url + "/api/v1/devices", json=body) as r:
        assert r.status == 201
    with pytest.raises(Conflict, match="gw03"):
        await registry.import_devices(plan, SYSTEM)
    assert await central.registered() == 0 and await central.registered(unregistered=True) == 0


async def test_devices_their_gateway_reported_are_adopted(central: Central) -> None:
    now = time.time_ns() // 1_000_000
    await central.store.apply(Changes(now=now, device_seen={("gw00", "wl-00000"): now}))
    assert await central.registered(unregistered=True) == 1
    result = await central.post_csv(big_csv(100), 200)
    assert result["imported"] == 100
    assert await central.registered() == 100 and await central.registered(unregistered=True) == 0
    async with central.http.get(central.url + "/api/v1/devices/gw00:wl-00000") as r:
        dev = await r.json()
    assert (dev["profile"], dev["street"], dev["firmware"]) == (
        "water-level-ultrasonic", "漕溪北路 0", "1.2")  # fmt: skip


async def test_a_file_over_16_mib_is_refused_with_the_limit(central: Central) -> None:
    too_big = (HEADER + "\n").encode() + b"x" * (16 * 1024**2)
    err = await central.post_csv(too_big, 413)
    assert "16 MiB" in json.dumps(err), err


@pytest.mark.timeout(300)
async def test_a_stop_during_an_import_is_quick_and_leaves_all_or_nothing(
    registry_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop lets a running import finish for a moment (5 s; here 0.5 s, so that a fast
    machine still sees the cancel), then cancels it, which takes its rows back."""
    monkeypatch.setattr(routes, "IMPORT_STOP_S", 0.5)
    store = await RegistryStore.open(registry_url)
    token = (await issue(store, TokenRequest(name="anna", role=Role.INSTALLER), SYSTEM)).token
    app = build_app(store=store, installers=InstallerSettings())
    stop, url = asyncio.Event(), asyncio.get_running_loop().create_future()

    async def serve() -> None:
        async with serving(app, "127.0.0.1", 0, limits=ServerLimits(shutdown_s=2.0)) as base:
            url.set_result(base)
            await stop.wait()

    server = asyncio.create_task(serve())
    headers = {"Authorization": f"Bearer {token}"}
    try:
        async with aiohttp.ClientSession(headers=headers) as h:
            c = Central(await url, h, store, app)
            await _register_gateways(c)
            upload = asyncio.create_task(c.post_csv(big_csv(50_000), 200))
            async with asyncio.timeout(240):  # until the import writes its first chunk
                while await c.registered(unregistered=True) == 0 and not upload.done():
                    await asyncio.wait({upload}, timeout=0.05)
            stopping = time.monotonic()
            stop.set()  # what SIGTERM does in `gridwatch central run` / `registry serve`
            await server
            stopped = time.monotonic() - stopping
            try:
                finished = (await upload)["imported"] == 50_000
            except aiohttp.ClientError:  # cancelled: the connection closed without an answer
                finished = False
        assert stopped < 15, f"the server took {stopped:.1f}s to stop"
        registered, left = await c.registered(), await c.registered(unregistered=True)
        # all or nothing; all also when the cancel came during the last transaction, which is
        # let finish (the answer is then lost with the connection)
        assert (registered, left) in ((0, 0), (50_000, 0)), (finished, stopped)
        assert registered == 50_000 or not finished
    finally:
        stop.set()
        await server
        await store.close()


# ---- the judgement, pure --------------------------------------------------------------------

PROFILES = load_profiles(default_profiles_dir())
SETTINGS = {"buses": [{"type": "modbus_tcp", "id": "cab", "host": "10.0.0.5", "timeout_s": 0.5},
                      {"type": "mqtt", "id": "local"}]}  # fmt: skip
LIVE = csvimport.GatewayState(
    id="gw1", registered=True, retired=False, config_desired=4, location=Location(),
    settings=SETTINGS,
    devices=[DeviceSpec("wl-1", "water-level-ultrasonic", "cab", 1, "", Location())],
    taken={"wl-1": "registered", "wl-0": "retired"},
)  # fmt: skip
STATES = {
    "gw1": LIVE,
    "gw-old": csvimport.GatewayState("gw-old", True, True, 2, Location(), SETTINGS, [], {}),
    "gw-seen": csvimport.GatewayState("gw-seen", False, False, 0, Location(), {}, [], {}),
}

# (row fields, problems [(field, words)]; [] = accepted)
ROWS: list[tuple[dict[str, Any], list[tuple[str, str]]]] = [
    ({}, []),
    ({"gateway": "gw-none"}, [("gateway", "'gw-none' is not registered")]),
    ({"gateway": "gw-seen"}, [("gateway", "'gw-seen' is not registered")]),
    ({"gateway": "gw-old"}, [("gateway", "'gw-old' is retired")]),
    ({"id": "wl-1"}, [("id", "'gw1:wl-1' is already registered")]),
    ({"id": "wl-0"}, [("id", "'gw1:wl-0' is already retired")]),
    ({"profile": "nope"}, [("profile", "unknown profile (got 'nope')")]),
    ({"bus": "rs485"}, [("bus", "unknown bus 'rs485': gateway 'gw1' has buses 'cab', 'local'")]),
    ({"id": "wl-1", "profile": "nope"}, [("id", "already registered"), ("profile", "unknown")]),
    ({"profile": "smoke-detector-mqtt"}, [("profile", "cannot run on a modbus_tcp bus")]),
    ({"bus": "local"}, [("profile", "cannot run on a mqtt bus")]),
]


@pytest.mark.parametrize(("fields", "problems"), ROWS)
def test_judge_one_row(fields: dict[str, Any], problems: list[tuple[str, str]]) -> None:
    row = {"gateway": "gw1", "id": "wl-9", "profile": "water-level-ultrasonic", "bus": "cab",
           "unit_id": 9, **fields}  # fmt: skip
    reports = csvimport.judge([(7, csvimport.DeviceCreate.model_validate(row))], STATES, PROFILES)
    if not problems:
        assert reports == []
        return
    assert [r.line for r in reports] == [7]
    assert [f for f, _ in reports[0].errors] == [f for f, _ in problems], reports
    for (_, message), (_, words) in zip(reports[0].errors, problems, strict=True):
        assert words in message


def test_judge_reports_config_problems_on_their_rows_only() -> None:
    rows = [(line, csvimport.DeviceCreate.model_validate(
                {"gateway": "gw1", "id": dev, "profile": profile, "bus": "cab"}))
            for line, dev, profile in [(2, "a", "water-level-ultrasonic"),
                                       (3, "b", "smoke-detector-mqtt"),
                                       (4, "c", "water-level-ultrasonic")]]  # fmt: skip
    reports = csvimport.judge(rows, STATES, PROFILES)
    assert [(r.line, r.device, [f for f, _ in r.errors]) for r in reports] == [
        (3, "gw1:b", ["profile"])
    ]


# (what the installer gets the row as, a slot clash with wl-1: unit 1 on bus cab)
ROWS_AGAINST_REGISTERED = [
    ({"unit_id": 1}, [("unit_id", "unit id 1 on bus 'cab' is already device 'gw1:wl-1'")]),
    ({"unit_id": 1, "bus": "local", "profile": "smoke-detector-mqtt", "address": "a1"}, []),
]


@pytest.mark.parametrize(("fields", "problems"), ROWS_AGAINST_REGISTERED)
def test_judge_refuses_a_second_device_at_a_registered_ones_unit_id(
    fields: dict[str, Any], problems: list[tuple[str, str]]
) -> None:
    test_judge_one_row(fields, problems)


# ---- reading the file, pure -----------------------------------------------------------------

H = "gateway,id,profile,bus,unit_id,address"
WL = "water-level-ultrasonic"
# (the file, how many data rows it has, the refusals (line, field, words); [] = all good)
FILES: list[tuple[str, int, list[tuple[int, str, str]]]] = [
    # the header as docs/registry.md writes it, with spaces; and as Excel saves it, with a BOM
    (f"gateway, id, profile, bus , unit_id\ngw1,a,{WL},cab,1\n", 1, []),
    (f"\ufeff{H}\ngw1,a,{WL},cab,1,\n", 1, []),
    (f"Gateway,ID,Profile,Bus\ngw1,a,{WL},cab\n", 1, []),
    # line numbers as an editor shows them: blank lines count, a row starts where it starts
    (f'{H}\n\ngw1,a,{WL},cab,1,\ngw1,b,{WL},cab,x,\n"gw1","c\nd",{WL},cab,3,\ngw1,e,{WL},cab,y,\n',
     4, [(4, "unit_id", "valid integer"), (5, "id", "should match pattern"),
         (7, "unit_id", "valid integer")]),
    # a second device at one bus's unit id: both rows named, each with the other's line
    (f"{H}\ngw1,a,{WL},cab,3,\ngw1,b,{WL},cab,03,\ngw1,c,{WL},cab2,3,\ngw2,d,{WL},cab,3,\n", 4,
     [(2, "unit_id", "line 3 has the same unit id 3 on bus 'cab'"),
      (3, "unit_id", "line 2 has the same unit id 3 on bus 'cab'")]),
    (f"{H}\ngw1,a,smoke-detector-mqtt,local,,860001\ngw1,b,smoke-detector-mqtt,local,,860001\n",
     2, [(2, "address", "line 3 has the same address 860001"),
         (3, "address", "line 2 has the same address 860001")]),
    (f"{H}\ngw1,a,{WL},cab,1,\ngw1,a,{WL},cab,2,\n", 2,
     [(2, "id", "line 3 has the same device id"), (3, "id", "line 2 has the same device id")]),
    # a malformed row still takes part in the duplicate check
    (f"{H}\ngw1,a,{WL},cab,4,\ngw1,b c,{WL},cab,4,\n,d,{WL},cab,5,\n", 3,
     [(2, "unit_id", "line 3"), (3, "id", "should match pattern"), (3, "unit_id", "line 2"),
      (4, "gateway", "required: the cell is empty")]),
    (f"{H}\ngw1,a,{WL},cab,1,,extra\n", 1, [(2, "(row)", "7 cells, but the header names 6")]),
    (f"gateway,id,profile,bus,lat,lon\ngw1,a,{WL},cab,131.19,121.43\n", 1,
     [(2, "lat", "must be a latitude, -90 to 90 (got '131.19')")]),
]  # fmt: skip


def test_a_file_all_at_one_unit_id_is_answered_quickly_and_briefly() -> None:
    """50,000 rows left at unit id 1 (a template filled in halfway): each row names three others
    and how many more, in about the time a good file takes."""
    text = H + "\n" + "".join(f"gw1,d{i},{WL},cab,1,\n" for i in range(50_000))
    started = time.process_time()
    parsed = csvimport.parse(text)
    took = time.process_time() - started
    assert len(parsed.bad) == 50_000 and parsed.good == []
    assert parsed.bad[0].errors == [("unit_id", "line 3, 4, 5 and 49996 more has the same unit id "
                                     "1 on bus 'cab' (two devices would answer as one)")]  # fmt: skip
    assert took < 60, took


@pytest.mark.parametrize(("text", "total", "refused"), FILES)
def test_parse(text: str, total: int, refused: list[tuple[int, str, str]]) -> None:
    parsed = csvimport.parse(text)
    assert parsed.total == total
    found = [(r.line, f, m) for r in parsed.bad for f, m in r.errors]
    assert [(line, f) for line, f, _ in found] == [(line, f) for line, f, _ in refused], found
    for (_, _, message), (_, _, words) in zip(found, refused, strict=True):
        assert words in message, found


# (header, words of the refusal)
HEADERS = [
    ("gateway,id,profil,bus", ["line 1 (the header)", "unknown column 'profil'",
                               "missing column 'profile'", "Known columns: gateway, id"]),
    ("gateway,id,profile,bus,id", ["column named twice: id"]),
    ("", ["empty file"]),
    ("\n\n", ["empty file"]),
]  # fmt: skip


@pytest.mark.parametrize(("header", "words"), HEADERS)
def test_a_header_refused_says_which_names(header: str, words: list[str]) -> None:
    with pytest.raises(csvimport.CsvRejected) as err:
        csvimport.parse(header + "\n")
    for w in words:
        assert w in str(err.value)


def test_every_problem_of_a_file_comes_in_one_round() -> None:
    """A row with a malformed value is judged on its other cells too: the installer fixes the
    file once, not once per kind of problem."""
    text = (f"{H}\ngw1,a,nope,cab,x,\ngw1,b,{WL},rs485,2,\ngw1,c,{WL},cab,1,\n"
            f"gw-none,d,{WL},cab,many,\ngw1,e,{WL},cab,5,\n")  # fmt: skip
    parsed = csvimport.parse(text)
    refused = csvimport.judge(parsed.good, STATES, PROFILES, parsed.bad)
    found = [(r.line, f) for r in csvimport.merged(parsed.bad, refused) for f, _ in r.errors]
    assert found == [(2, "unit_id"), (2, "profile"), (3, "bus"), (4, "unit_id"),
                     (5, "unit_id"), (5, "gateway")]  # fmt: skip


def test_a_device_read_faster_than_its_bus_times_out_is_told_how_to_fix_it() -> None:
    slow = {"buses": [{"type": "modbus_tcp", "id": "cabinet", "host": "10.0.0.5"}]}  # 1.0 s
    gw = csvimport.GatewayState("gw-xh-12", True, False, 1, Location(), slow, [], {})
    row = {"gateway": "gw-xh-12", "id": "gd-001", "profile": "gas-detector", "bus": "cabinet",
           "unit_id": 6}  # fmt: skip
    [report] = csvimport.judge([(2, csvimport.DeviceCreate.model_validate(row))],
                               {"gw-xh-12": gw}, PROFILES)  # fmt: skip
    [(where, message)] = report.errors
    assert where == "bus" and report.line == 2
    assert "gas device 'gd-001' (gas-detector) is read every 1 s" in message
    assert "bus 'cabinet' waits up to 1 s" in message
    assert "gridwatch gateway edit gw-xh-12 --bus cabinet --timeout 0.5" in message


# ---- the file an installer starts from, and the count -----------------------------------------


async def test_the_shipped_sample_imports_as_it_is(central: Central) -> None:
    """``firmware_configs/samples/devices.csv``, for the gateway docs/registry.md registers."""
    body = {"id": "gw-xh-12", "location": {"district": "310104", "grid": "310104014024001"},
            "buses": [{"type": "modbus_tcp", "id": "cabinet", "host": "10.0.0.5", "port": 502,
                       "timeout_s": 0.5}, {"type": "mqtt", "id": "local"}]}  # fmt: skip
    async with central.http.post(central.url + "/api/v1/gateways", json=body) as r:
        assert r.status == 201, await r.text()
    text = (firmware(SAMPLES) / "devices.csv").read_text(encoding="utf-8")
    result = await central.post_csv(text, 200)
    assert result["imported"] == 20
    async with central.http.get(central.url + "/api/v1/devices?gateway=gw-xh-12") as r:
        devices = await r.json()
    coords = {(d["lat"], d["lon"]) for d in devices}
    assert len(coords) == 20 and {d["grid"] for d in devices} == {"310104014024001"}
    # the sensors under manhole covers name their component (雨水/上水/燃气井盖) and its
    # departments; smoke detectors and cameras watch none
    attached = {d["device"]: (d["class_code"], d["dept_competent"]["code"]) for d in devices
                if d["component_id"]}  # fmt: skip
    assert {c for c, _ in attached.values()} == {"0103", "0101", "0111"}
    assert len(attached) == 12 and attached["wl-001"] == ("0103", "XH-SW"), attached
    assert {d["place"]["street"]["zh"] for d in devices} == {"徐家汇街道"}


async def test_the_count_is_the_files_data_rows_and_names_each_refused_line_once(
    central: Central,
) -> None:
    """20 rows, 2 refused (one malformed, one the registry refuses twice over): '2 of 20'."""
    rows = [f"gw00,wl-{i:02d},{WL},b0,{i + 1},310104" for i in range(20)]
    rows[4] = f"gw00,wl-04,{WL},b0,many,310104"  # line 6
    rows[9] = "gw00,wl-09,no-such-profile,rs485,10,310104"  # line 11
    text = "gateway,id,profile,bus,unit_id,district\n" + "\n".join(rows) + "\n"
    report = await central.post_csv(text, 422)
    assert "(2 of 20 rows refused; nothing imported)" in report["detail"], report["detail"]
    assert [e["loc"] for e in report["errors"]] == [
        "line 6 (gw00:wl-04).unit_id", "line 11 (gw00:wl-09).profile",
        "line 11 (gw00:wl-09).bus"]  # fmt: skip
    assert "gateway 'gw00' has buses 'b0', 'b1', 'b2', 'b3', 'b4'" in report["errors"][2]["msg"]


async def test_a_device_at_a_taken_unit_id_is_refused_naming_the_other(central: Central) -> None:
    """Through the API and through a file: the registered device is named."""
    first = {"gateway": "gw01", "id": "wl-first", "profile": WL, "bus": "b1", "unit_id": 7}
    async with central.http.post(central.url + "/api/v1/devices", json=first) as r:
        assert r.status == 201, await r.text()
    second = {**first, "id": "wl-second"}
    async with central.http.post(central.url + "/api/v1/devices", json=second) as r:
        err = await r.json()
        assert r.status == 409, err
    assert "unit id 7 on bus 'b1' is already device 'gw01:wl-first'" in err["detail"], err
    async with central.http.post(central.url + "/api/v1/devices",
                                 json={**second, "bus": "b2"}) as r:  # fmt: skip
        assert r.status == 201, await r.text()  # another bus: another line, no clash
    report = await central.post_csv(f"gateway,id,profile,bus,unit_id\ngw01,wl-3,{WL},b1,7\n", 422)
    assert report["errors"] == [{
        "loc": "line 2 (gw01:wl-3).unit_id",
        "msg": "unit id 7 on bus 'b1' is already device 'gw01:wl-first' (two devices would "
               "answer as one)"}]  # fmt: skip


async def test_two_registrations_at_one_unit_id_at_once_one_wins(central: Central) -> None:
    """Checked and inserted under the gateway's lock: never both in."""

    async def register(i: int) -> int:
        body = {"gateway": "gw02", "id": f"wl-race-{i}", "profile": WL, "bus": "b3", "unit_id": 9}
        async with central.http.post(central.url + "/api/v1/devices", json=body) as r:
            return r.status

    for _ in range(3):
        answers = await asyncio.gather(*(register(i) for i in range(4)))
        assert set(answers) <= {201, 409}, answers
    async with central.http.get(central.url + "/api/v1/devices?gateway=gw02") as r:
        assert [d["id"] for d in await r.json() if d["unit_id"] == 9 and d["bus"] == "b3"] in (
            [f"gw02:wl-race-{i}"] for i in range(4)
        )
