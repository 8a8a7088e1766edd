"""The labels of the time series and docs/analytics.md, on the real parts.

Devices registered through the registry at their places; readings sent through mosquitto and a
real bridge into a VictoriaMetrics started with the command line the docs recommend:

- each reading lands labelled with its device's registered district, street and grid cell and its
  profile's unit, as the registry shows the device; a device the registry does not know lands
  too, without a place; readings sent before the device was registered stay in their old series,
  found by gateway, device and point;
- a query by street returns exactly that street's sensors, with no forced flush and no per-query
  latency argument, a few seconds after the bridge acknowledged them (the docs' latency offset);
- every PromQL query of docs/analytics.md answers what its question asks (expectations written
  out here, one per query: a query added to the guide fails here until it has one);
- the registry's ``device_facts`` (one lookup per step) on SQLite and PostgreSQL;
- the embedded SQLite sink keeps the same labels as columns, adds them to a file written before
  they existed (two processes opening it at once), and the guide's SQL answers from it.
"""

from __future__ import annotations

import asyncio
import json
import re
import shlex
import sqlite3
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cloud_bridge import InfluxSink, SqliteSink
from device_registry import RegistryStore
from device_registry.http.auth import SYSTEM
from device_registry.ingest.changes import DeviceFacts
from device_registry.inventory.configgen import Uplink
from device_registry.inventory.provisioning import NoBrokerAccess
from device_registry.inventory.registry import Registry
from device_registry.inventory.requests import DeviceCreate, DevicePatch, GatewayCreate
from gridwatch.ground.contract import Birth, DeviceInfo, Location, Reading, Topics
from gridwatch.ground.gatewayconf import default_profiles_dir
from gridwatch.ground.profiles import load_profiles
from tests._central_helpers import batch, bridge_config, bridge_on, now_ms, publisher, until
from tests.services import Mosquitto, Victoria

DOCS = Path(__file__).resolve().parent.parent / "docs"
GW = "gw-xh-12"
BUS = {"type": "modbus_tcp", "id": "cabinet", "host": "10.0.0.5", "port": 502, "timeout_s": 0.5}
CAOXI = {"district": "310104", "street": "漕溪北路"}
DEVICES = {
    # device: (profile, where an installer registers it)
    "wl-001": ("water-level-ultrasonic", {**CAOXI, "grid": "310104014024001"}),
    "wl-002": ("water-level-pressure", {**CAOXI, "grid": "310104003019001"}),
    "wl-003": ("water-level-ultrasonic", {"district": "310104", "street": "肇嘉浜路",
                                          "grid": "310104014024001"}),
    # a street of the same name in another district
    "wl-004": ("water-level-ultrasonic", {"district": "310106", "street": "漕溪北路",
                                          "grid": "310106001001007"}),
}  # fmt: skip
UNKNOWN = "wl-099"  # sends readings, nobody registered it
LEVELS = {  # the level each device reads 20 s, 10 s and 0 s before t0
    "wl-001": (2.4, 2.6, 2.7), "wl-002": (1.0, 1.1, 1.1), "wl-003": (2.9, 3.0, 3.1),
    "wl-004": (2.8, 2.9, 2.9), UNKNOWN: (0.4, 0.4, 0.4),
}  # fmt: skip
EARLY = 2.0
"""wl-001's level 50 s before t0, sent before it was registered: a series without a place."""


# ---- the docs' VictoriaMetrics ---------------------------------------------------------------


def documented_commands() -> dict[str, list[str]]:
    """Each doc's ``victoria-metrics`` command line, as argv (line continuations joined)."""
    found = {}
    for name in ("deploy.md", "central.md", "analytics.md"):
        text = (DOCS / name).read_text(encoding="utf-8")
        m = re.search(r"^victoria-metrics (?:[^\n]*\\\n)*[^\n]*$", text, re.M)
        assert m is not None, f"docs/{name} shows no victoria-metrics command line"
        found[name] = shlex.split(m.group(0).replace("\\\n", " "))
    return found


def test_every_doc_recommends_the_same_victoria_metrics_flags() -> None:
    commands = documented_commands()
    assert len({tuple(argv) for argv in commands.values()}) == 1, commands
    assert "-search.latencyOffset=1s" in commands["deploy.md"]
    assert "-dedup.minScrapeInterval=1ms" in commands["deploy.md"]


@pytest.fixture
def docs_vm(tmp_path: Path) -> Any:
    """VictoriaMetrics of this test's own (the queries count every series in it), with the
    docs' flags; its address and data folder moved to the test's."""
    argv = documented_commands()["deploy.md"]
    flags = [a for a in argv[1:] if not a.startswith(("-httpListenAddr=", "-storageDataPath="))]
    vm = Victoria(tmp_path / "vm", flags=flags).start()
    yield vm
    vm.stop()


def instant(vm: Victoria, query: str, at_ms: int | None = None) -> list[dict[str, Any]]:
    """``/api/v1/query`` as a dashboard asks it: no flush, no per-query latency argument."""
    args = {"query": query, **({"time": f"{at_ms / 1000:.3f}"} if at_ms is not None else {})}
    url = f"{vm.url}/api/v1/query?{urllib.parse.urlencode(args)}"
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


async def poll(
    vm: Victoria, query: str, done: Callable[[list[dict[str, Any]]], bool], at_ms: int | None = None
) -> list[dict[str, Any]]:
    """The query's answer once ``done`` holds for it (new series are indexed in the background)."""
    deadline = time.monotonic() + 15
    while True:
        result = await asyncio.to_thread(instant, vm, query, at_ms)
        if done(result):
            return result
        assert time.monotonic() < deadline, f"{query} still answers {result}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("offset", ["docs", "default"])
async def test_the_latency_offset_the_docs_give_shows_a_reading_at_once(
    tmp_path: Path, offset: str
) -> None:
    """A dashboard's instant query shows a reading once it is searchable with the docs' flags;
    with VictoriaMetrics' default offset (30 s) the same query answers nothing yet."""
    flags = [a for a in documented_commands()["deploy.md"][1:]
             if not a.startswith(("-httpListenAddr=", "-storageDataPath="))]  # fmt: skip
    if offset == "default":
        flags = [a for a in flags if not a.startswith("-search.latencyOffset=")]
    vm = Victoria(tmp_path / "vm", flags=flags).start()
    sink = InfluxSink(vm.url)
    try:
        t = now_ms()
        await sink.write([batch(GW, [Reading(device="wl-001", point="level", value=2.7,
                                             unit="m", ts=t)])])  # fmt: skip
        written = time.monotonic()
        deadline = written + 15
        while not await asyncio.to_thread(vm.export, 'gridwatch_value{device="wl-001"}'):
            assert time.monotonic() < deadline, "the point never became searchable"
            await asyncio.sleep(0.1)
        query = 'gridwatch_value{device="wl-001"}'
        if offset == "default":
            assert await asyncio.to_thread(instant, vm, query) == []
            return
        [shown] = await poll(vm, query, bool)
        assert float(shown["value"][1]) == 2.7
        print(f"shown by a plain instant query {time.monotonic() - written:.2f} s after the write")
    finally:
        await sink.close()
        vm.stop()


HOSTILE = [
    # (street as typed, the label VictoriaMetrics keeps)
    ("Hauptstraße 3, Ecke Weg", "Hauptstraße 3, Ecke Weg"),
    ('a=b\\c "quoted"', 'a=b\\c "quoted"'),
    ("Main\tSt\r\nNorth", "Main St  North"),  # no escape for a control character: a space
    ("x value=1 1", "x value=1 1"),  # what a field and a timestamp look like
]


async def test_place_names_people_type_land_as_typed(victoria: Victoria, prefix: str) -> None:
    facts = DeviceFacts(locations={(prefix, f"d{i}"): Location(district="310104", street=typed)
                                   for i, (typed, _) in enumerate(HOSTILE)})  # fmt: skip
    t = now_ms()
    sink = InfluxSink(victoria.url)
    try:
        written = await sink.write([batch(prefix, [
            Reading(device=f"d{i}", point="level", value=float(i), unit="m", ts=t)
            for i in range(len(HOSTILE))])], facts)  # fmt: skip
    finally:
        await sink.close()
    assert written == (len(HOSTILE), 0)
    deadline = time.monotonic() + 15
    while len(rows := await asyncio.to_thread(
            victoria.export, f'gridwatch_value{{gateway="{prefix}"}}')) < len(HOSTILE):  # fmt: skip
        assert time.monotonic() < deadline, rows
        await asyncio.sleep(0.1)
    assert {r["metric"]["device"]: r["metric"]["street"] for r in rows} == {
        f"d{i}": kept for i, (_, kept) in enumerate(HOSTILE)
    }


# ---- a registered district, and readings through the bridge ----------------------------------


def profiles() -> Mapping[str, Any]:
    return load_profiles(default_profiles_dir())


async def register(store: RegistryStore) -> Registry:
    """The gateway and ``DEVICES`` registered as an installer does (the registry's own code)."""
    reg = Registry(store, NoBrokerAccess(), Uplink(), profiles, lambda _gw: None)
    await reg.add_gateway(
        GatewayCreate.model_validate(
            {
                "id": GW,
                "location": {"district": "310104", "grid": "310104014024001"},
                "buses": [BUS],
            }
        ),
        SYSTEM,
    )
    for unit_id, (dev, (profile, where)) in enumerate(DEVICES.items(), start=1):
        await reg.add_device(DeviceCreate.model_validate(
            {"gateway": GW, "id": dev, "profile": profile, "bus": "cabinet", "unit_id": unit_id,
             "location": where}), SYSTEM)  # fmt: skip
    return reg


def readings(t0: int) -> list[Reading]:
    out = [Reading(device=dev, point="level", value=v, unit="m", ts=t0 - 20_000 + 10_000 * i)
           for dev, values in LEVELS.items() for i, v in enumerate(values)]  # fmt: skip
    # the gateway sends no unit with it: the registered profile's is the label
    out.append(Reading(device="wl-002", point="temperature", value=18.5, unit="", ts=t0))
    return out


@dataclass
class Seeded:
    t0: int
    acked_at: float
    """time.monotonic() when the bridge had acknowledged the last of them."""


async def seed(
    mosquitto: Mosquitto, store: RegistryStore, vm_url: str, prefix: str, tmp_path: Path
) -> Seeded:
    """wl-001 reads once before anyone registers it; then the district is registered and every
    device (and one nobody registered) sends its readings."""
    t0 = (now_ms() // 1000) * 1000
    topics = Topics(prefix)
    sink = InfluxSink(vm_url)
    try:
        async with (
            bridge_on(bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path), store,
                      sink) as b,
            publisher(mosquitto.host, mosquitto.port) as pub,
        ):  # fmt: skip
            early = Reading(device="wl-001", point="level", value=EARLY, unit="m", ts=t0 - 50_000)
            await pub.publish(topics.telemetry(GW), batch(GW, [early]).model_dump_json(), qos=1)
            await until(b, lambda s: s.points_written >= 1)
            await register(store)
            later = readings(t0)
            await pub.publish(topics.telemetry(GW), batch(GW, later).model_dump_json(), qos=1)
            await until(b, lambda s: s.points_written >= 1 + len(later))
            acked = time.monotonic()
    finally:
        await sink.close()
    return Seeded(t0, acked)


# ---- the tests -------------------------------------------------------------------------------


def _place(labels: Mapping[str, str]) -> tuple[str, str, str, str]:
    return (labels.get("district", ""), labels.get("street", ""), labels.get("grid", ""),
            labels.get("unit", ""))  # fmt: skip


async def test_readings_land_with_their_registered_place_and_unit(
    mosquitto: Mosquitto, docs_vm: Victoria, store: RegistryStore, prefix: str, tmp_path: Path
) -> None:
    seeded = await seed(mosquitto, store, docs_vm.url, prefix, tmp_path)

    # a dashboard's query by street, as it asks: exactly that street's sensors, without a flush
    street = 'gridwatch_value{district="310104", street="漕溪北路", point="level"}'
    newest = {"wl-001": 2.7, "wl-002": 1.1}
    await poll(docs_vm, street,
               lambda r: {x["metric"]["device"]: float(x["value"][1]) for x in r} == newest)  # fmt: skip
    visible_s = time.monotonic() - seeded.acked_at

    rows = await asyncio.to_thread(docs_vm.export, f'gridwatch_value{{gateway="{GW}"}}')
    series = {(r["metric"]["device"], r["metric"]["point"], _place(r["metric"])):
              sorted(zip(r["timestamps"], r["values"], strict=True)) for r in rows}  # fmt: skip
    t0 = seeded.t0
    at = [t0 - 20_000, t0 - 10_000, t0]
    assert series == {
        # sent before it was registered: its own series, found by gateway, device and point
        ("wl-001", "level", ("", "", "", "m")): [(t0 - 50_000, EARLY)],
        ("wl-001", "level", ("310104", "漕溪北路", "310104014024001", "m")):
            list(zip(at, LEVELS["wl-001"], strict=True)),
        ("wl-002", "level", ("310104", "漕溪北路", "310104003019001", "m")):
            list(zip(at, LEVELS["wl-002"], strict=True)),
        ("wl-002", "temperature", ("310104", "漕溪北路", "310104003019001", "C")): [(t0, 18.5)],
        ("wl-003", "level", ("310104", "肇嘉浜路", "310104014024001", "m")):
            list(zip(at, LEVELS["wl-003"], strict=True)),
        ("wl-004", "level", ("310106", "漕溪北路", "310106001001007", "m")):
            list(zip(at, LEVELS["wl-004"], strict=True)),
        # nobody registered it: no place, the unit its gateway sent, and not dropped
        (UNKNOWN, "level", ("", "", "", "m")): list(zip(at, LEVELS[UNKNOWN], strict=True)),
    }  # fmt: skip
    # the labels are the registry's word on each device: what its view shows
    views = {d.device: d for d in await store.devices(gateway=GW)}
    for dev, _, (district, street_name, grid, _) in series:
        if district:
            view = views[dev]
            assert view.registered, dev
            assert (district, street_name, grid) == (view.district, view.street, view.grid), dev
    assert not views[UNKNOWN].registered
    print(f"query by street answered {visible_s:.2f} s after the bridge's acknowledgement")


# The expectation of every PromQL query of docs/analytics.md, evaluated one second after t0:
# (the labels that tell its answers apart, {their values: the answer}).
EXPECTED: dict[str, tuple[tuple[str, ...], dict[tuple[str, ...], float]]] = {
    'max by (gateway, device, point) (gridwatch_value{gateway="gw-xh-12", device="wl-001", '
    'point="level"})': (("device",), {("wl-001",): 2.7}),
    'gridwatch_value{district="310104", street="漕溪北路", point="level"}':
        (("device",), {("wl-001",): 2.7, ("wl-002",): 1.1}),
    'max by (district, street) (gridwatch_value{point="level"})':
        (("district", "street"), {("310104", "漕溪北路"): 2.7, ("310104", "肇嘉浜路"): 3.1,
                                  ("310106", "漕溪北路"): 2.9,
                                  # wl-001 before it was registered, and wl-099
                                  ("", ""): EARLY}),
    'avg by (grid) (gridwatch_value{district="310104", point="level"})':
        (("grid",), {("310104014024001",): (2.7 + 3.1) / 2, ("310104003019001",): 1.1}),
    "sum by (district) (count_over_time(gridwatch_value[1m]))":
        (("district",), {("310104",): 3 + 4 + 3, ("310106",): 3, ("",): 1 + 3}),
    'gridwatch_value{point="level", unit="m"} > 2.5':
        (("device",), {("wl-001",): 2.7, ("wl-003",): 3.1, ("wl-004",): 2.9}),
    'max_over_time(gridwatch_value{point="level", unit="m"}[1h]) > 2.5':
        (("device",), {("wl-001",): 2.7, ("wl-003",): 3.1, ("wl-004",): 2.9}),
}  # fmt: skip


def documented_queries() -> list[str]:
    text = (DOCS / "analytics.md").read_text(encoding="utf-8")
    return [" ".join(q.split()) for q in re.findall(r"^```promql\n(.*?)^```", text, re.M | re.S)]


def test_every_query_of_the_guide_has_its_expectation() -> None:
    assert sorted(documented_queries()) == sorted(EXPECTED)


async def test_the_guides_queries_answer_their_questions(
    mosquitto: Mosquitto, docs_vm: Victoria, store: RegistryStore, prefix: str, tmp_path: Path
) -> None:
    seeded = await seed(mosquitto, store, docs_vm.url, prefix, tmp_path)
    at = seeded.t0 + 1000  # (until it is 1 s past, the docs' offset, VictoriaMetrics asks earlier)
    for query in documented_queries():
        keys, want = EXPECTED[query]

        def answers(
            result: list[dict[str, Any]], keys: tuple[str, ...] = keys
        ) -> dict[tuple[str, ...], float]:
            return {tuple(r["metric"].get(k, "") for k in keys): float(r["value"][1])
                    for r in result}  # fmt: skip

        # polled until right: a new series is searchable a few seconds after its first write
        await poll(docs_vm, query, lambda r, w=want, a=answers: a(r) == pytest.approx(w), at)


# ---- the registry's facts, on SQLite and PostgreSQL ------------------------------------------


async def test_device_facts_give_place_and_profile_units(registry_url: str) -> None:
    store = await RegistryStore.open(registry_url)
    try:
        reg = await register(store)
        moved = {
            "location": {"district": "310104", "street": "肇嘉浜路", "grid": "310104014006001"}
        }
        await reg.update_device(f"{GW}:wl-003", DevicePatch.model_validate(moved), SYSTEM)
        await reg.retire_device(f"{GW}:wl-004", SYSTEM)
        facts = await store.device_facts(
            {(GW, d) for d in ("wl-001", "wl-002", "wl-003", "wl-004", UNKNOWN)}
            | {("gw-x", "wl-001")}
        )
        shipped = profiles()
        assert {k: (v.district, v.street, v.grid) for k, v in facts.locations.items()} == {
            (GW, "wl-001"): ("310104", "漕溪北路", "310104014024001"),
            (GW, "wl-002"): ("310104", "漕溪北路", "310104003019001"),
            (GW, "wl-003"): ("310104", "肇嘉浜路", "310104014006001"),  # moved: its new place
        }
        assert dict(facts.units[(GW, "wl-002")]) == {
            "level": "m", "temperature": "C", "status": "", "overpressure": ""
        }  # fmt: skip
        assert set(facts.units) == {(GW, "wl-001"), (GW, "wl-002"), (GW, "wl-003")}
        assert set(facts.units[(GW, "wl-001")]) == set(shipped["water-level-ultrasonic"].points)

        # the registry's own profiles, where installers are wired with them, over the shipped
        mine = dict(shipped)
        mine["water-level-pressure"] = shipped["water-level-pressure"].model_copy(
            update={"points": {"level": shipped["water-level-pressure"].points["level"]
                               .model_copy(update={"unit": "cm"})}})  # fmt: skip
        store.profiles = lambda: mine
        facts = await store.device_facts({(GW, "wl-002")})
        assert dict(facts.units[(GW, "wl-002")]) == {"level": "cm"}
    finally:
        await store.close()


async def test_a_device_nobody_registered_is_labelled_where_its_gateways_birth_puts_it(
    mosquitto: Mosquitto, store: RegistryStore, sink: SqliteSink, prefix: str, tmp_path: Path
) -> None:
    """A gateway nobody registered names its devices in its Birth with their places
    (``device_info``): their readings carry those places, so a district's queries find them
    before an installer registers them; a device the Birth places nowhere gets no place."""
    gw, t = prefix, now_ms()
    topics = Topics(prefix)
    xuhui = Location(district="xuhui", street="Caoxi Rd", grid="XH-0101")
    born = Birth(gateway=gw, session=1, ts=t, devices=["wl-a", "wl-b"], device_info=[
        DeviceInfo(device="wl-a", profile="water-level-ultrasonic", interval_s=5, location=xuhui),
        DeviceInfo(device="wl-b", profile="water-level-ultrasonic", interval_s=5)])  # fmt: skip
    sent = batch(gw, [Reading(device=d, point="level", value=1.0, unit="m", ts=t)
                      for d in ("wl-a", "wl-b")])  # fmt: skip
    async with (
        bridge_on(bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path), store,
                  sink) as b,
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):  # fmt: skip
        await pub.publish(topics.status(gw), born.model_dump_json(), qos=1, retain=True)
        await until(b, lambda s: s.ingested.get("birth", 0) >= 1)
        await pub.publish(topics.telemetry(gw), sent.model_dump_json(), qos=1)
        await until(b, lambda s: s.points_written >= 2)
    with sqlite3.connect(tmp_path / "telemetry.db") as db:
        rows = db.execute("SELECT device, district, street, grid FROM samples ORDER BY device")
        assert list(rows) == [("wl-a", "xuhui", "Caoxi Rd", "XH-0101"), ("wl-b", "", "", "")]
    # still nobody's: no owner, no place to put its alerts at; the Birth's place for its series
    facts = await store.device_facts({(gw, "wl-a"), (gw, "wl-b")})
    assert (facts.owners, facts.locations) == ({}, {})
    assert {k: v.street for k, v in facts.reported.items()} == {(gw, "wl-a"): "Caoxi Rd"}


# ---- the embedded SQLite sink ----------------------------------------------------------------

_OLD_SCHEMA = """
CREATE TABLE samples (
    gateway TEXT NOT NULL, device TEXT NOT NULL, point TEXT NOT NULL, ts INTEGER NOT NULL,
    value ANY, quality TEXT NOT NULL, historical INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (gateway, device, point, ts)
) WITHOUT ROWID, STRICT;
CREATE INDEX samples_ts ON samples (ts);
INSERT INTO samples VALUES ('gw-xh-12', 'wl-001', 'level', 1000, 1.5, 'good', 0);
"""


def documented_sql() -> str:
    text = (DOCS / "analytics.md").read_text(encoding="utf-8")
    [sql] = re.findall(r"^```sql\n(.*?)^```", text, re.M | re.S)
    return str(sql)


async def test_sqlite_sink_keeps_the_labels_and_upgrades_an_old_file(
    store: RegistryStore, tmp_path: Path
) -> None:
    path = tmp_path / "telemetry.db"
    with sqlite3.connect(path) as old:  # a file a bridge wrote before the labels existed
        old.executescript(_OLD_SCHEMA)
    # two processes opening it at once: one adds the columns, the other finds them
    sinks = await asyncio.gather(SqliteSink.open(path), SqliteSink.open(path))
    try:
        await register(store)
        t0 = now_ms()
        later = readings(t0)
        facts = await store.device_facts({(GW, r.device) for r in later})
        assert await sinks[0].write([batch(GW, later)], facts) == (len(later), 0)
        # the dashboard's charts read by gateway, device and point, old rows and new
        assert await sinks[1].history(GW, "wl-001", "level") == [
            (1000, 1.5, "good"), *((t0 - 20_000 + 10_000 * i, v, "good")
                                   for i, v in enumerate(LEVELS["wl-001"])),
        ]  # fmt: skip
    finally:
        for sink in sinks:
            await sink.close()
    with sqlite3.connect(path) as db:
        labelled = db.execute(
            "SELECT device, point, district, street, grid, unit FROM samples WHERE ts = ?", (t0,)
        ).fetchall()
        answer = db.execute(documented_sql()).fetchall()
        old_row = db.execute("SELECT district, street, grid, unit FROM samples WHERE ts = 1000")
        assert old_row.fetchall() == [("", "", "", "")]
    assert sorted(labelled) == [
        ("wl-001", "level", "310104", "漕溪北路", "310104014024001", "m"),
        ("wl-002", "level", "310104", "漕溪北路", "310104003019001", "m"),
        ("wl-002", "temperature", "310104", "漕溪北路", "310104003019001", "C"),
        ("wl-003", "level", "310104", "肇嘉浜路", "310104014024001", "m"),
        ("wl-004", "level", "310106", "漕溪北路", "310106001001007", "m"),
        (UNKNOWN, "level", "", "", "", "m"),
    ]
    # the guide's SQL: the water level of every sensor on one street, newest first
    assert answer == [
        (dev, t0 - 20_000 + 10_000 * i, LEVELS[dev][i], "m")
        for i in (2, 1, 0) for dev in ("wl-001", "wl-002")
    ]  # fmt: skip
