"""The labels of a reading's time series (cloud_bridge/labels.py) and their line protocol, as
tables: the registry's place and profile unit for a registered device, nothing invented for one
it does not know, the labels a step's facts give whatever the series cache saw before."""

from __future__ import annotations

import pytest

from cloud_bridge.core import IngestCore, Raw
from cloud_bridge.labels import LABELS, NO_FACTS, Labels, series_labels
from cloud_bridge.lineproto import batch_lines
from device_registry.ingest.changes import DeviceFacts
from gridwatch.ground.contract import Location, Reading, TelemetryBatch, Topics
from tests._central_helpers import batch

CAOXI = Location(
    district="310104", street="漕溪北路 88号", grid="310104014024001", lat=31.19, lon=121.43
)
FACTS = DeviceFacts(
    owners={"wl-1": frozenset({"gw1"}), "wl-2": frozenset({"gw1"}), "wl-3": frozenset({"gw1"})},
    locations={("gw1", "wl-1"): CAOXI, ("gw1", "wl-2"): Location(district="310106")},
    units={("gw1", "wl-1"): {"level": "m", "counter": ""}, ("gw1", "wl-3"): {"level": "m"}},
)

BORN = DeviceFacts(
    owners=FACTS.owners, units=FACTS.units,
    locations={("gw1", "wl-1"): CAOXI},
    reported={("gw1", "wl-9"): Location(district="310104", street="虹桥路", grid="310104012002001"),
              ("gw1", "wl-1"): Location(district="310105")},
)  # fmt: skip


def test_label_names() -> None:
    # written out: these are the names analysts' queries and the SQLite sink's columns use
    assert LABELS == ("district", "street", "grid", "unit")


@pytest.mark.parametrize(
    ("why", "facts", "gateway", "device", "point", "sent", "labels"),
    [
        ("registered at a place, with a profile: both the registry's", FACTS, "gw1", "wl-1",
         "level", "cm", ("310104", "漕溪北路 88号", "310104014024001", "m")),
        ("its profile gives the point no unit: none, whatever was sent", FACTS, "gw1", "wl-1",
         "counter", "n", ("310104", "漕溪北路 88号", "310104014024001", "")),
        ("a point its profile lacks: the unit its gateway sent", FACTS, "gw1", "wl-1",
         "battery", "V", ("310104", "漕溪北路 88号", "310104014024001", "V")),
        ("a place of a district alone", FACTS, "gw1", "wl-2", "level", "m",
         ("310106", "", "", "m")),
        ("registered without a place", FACTS, "gw1", "wl-3", "level", "", ("", "", "", "m")),
        ("a device the registry does not know", FACTS, "gw1", "wl-9", "level", "m",
         ("", "", "", "m")),
        ("the same name under another gateway is another device", FACTS, "gw2", "wl-1",
         "level", "cm", ("", "", "", "cm")),
        ("no facts at all (the registry was not asked)", NO_FACTS, "gw1", "wl-1", "level", "",
         ("", "", "", "")),
        ("nobody registered it; its gateway's Birth put it somewhere: there", BORN, "gw1",
         "wl-9", "level", "m", ("310104", "虹桥路", "310104012002001", "m")),
        ("registered: the installer's place, not its gateway's", BORN, "gw1", "wl-1", "level",
         "m", ("310104", "漕溪北路 88号", "310104014024001", "m")),
    ],
)  # fmt: skip
def test_series_labels(
    why: str, facts: DeviceFacts, gateway: str, device: str, point: str, sent: str, labels: Labels
) -> None:
    r = Reading(device=device, point=point, value=1.0, unit=sent, ts=1000)
    assert series_labels(facts, gateway, r) == labels, why


def _lines(facts: DeviceFacts, *readings: Reading, gateway: str = "gw1") -> list[str]:
    out: list[str] = []
    msg = TelemetryBatch.model_construct(id="m", gateway=gateway, seq=1, session=1,
                                         readings=list(readings))  # fmt: skip
    batch_lines(msg, "gridwatch", out, facts)
    return out


def at(device: str, point: str = "level", unit: str = "m", ts: int = 1000) -> Reading:
    return Reading(device=device, point=point, value=1.5, unit=unit, ts=ts)


@pytest.mark.parametrize(
    ("facts", "reading", "line"),
    [
        # the device's place after its id, the point's unit after the point: the store sorts
        # labels itself, the order saves building a device's part again for each point
        (FACTS, at("wl-1"),
         r"gridwatch,gateway=gw1,device=wl-1,district=310104,street=漕溪北路\ 88号,grid=310104014024001,"
         r"point=level,quality=good,unit=m value=1.5 1000"),
        # empty labels are left out (line protocol has no empty tag values), not written as "_"
        (FACTS, at("wl-2"),
         "gridwatch,gateway=gw1,device=wl-2,district=310106,point=level,quality=good,unit=m "
         "value=1.5 1000"),
        (FACTS, at("wl-9", unit=""),
         "gridwatch,gateway=gw1,device=wl-9,point=level,quality=good value=1.5 1000"),
        # names people type: spaces, commas, '=' and backslashes escaped, other letters as they are
        (DeviceFacts(locations={("gw1", "wl-1"): Location(
            district="nord=1", street="Hauptstraße 3, Ecke \\ Weg", grid="A 1")}),
         at("wl-1", unit="m³/h"),
         "gridwatch,gateway=gw1,device=wl-1,district=nord\\=1,"
         "street=Hauptstraße\\ 3\\,\\ Ecke\\ \\\\\\ Weg,grid=A\\ 1,point=level,quality=good,"
         "unit=m³/h value=1.5 1000"),
        # a street is free text: a tab or a line end typed into it must not break the line
        (DeviceFacts(locations={("gw1", "wl-1"): Location(district="d", street="Main\tSt\r\nN")}),
         at("wl-1", unit=""),
         "gridwatch,gateway=gw1,device=wl-1,district=d,street=Main\\ St\\ \\ N,point=level,"
         "quality=good value=1.5 1000"),
    ],
)  # fmt: skip
def test_line_protocol_labels(facts: DeviceFacts, reading: Reading, line: str) -> None:
    assert _lines(facts, reading) == [line]


def test_a_moved_device_gets_its_new_place_at_once() -> None:
    """The series cache keys by the labels too: a device an installer moves between two steps
    is written at its new place by the next step, not at the one the cache saw first."""
    before = _lines(FACTS, at("wl-1", ts=1000))
    moved = DeviceFacts(locations={("gw1", "wl-1"): Location(district="310104", street="肇嘉浜路 1号",
                                                              grid="310104003019001")},
                        units=FACTS.units)  # fmt: skip
    after = _lines(moved, at("wl-1", ts=2000))
    assert "street=漕溪北路\\ 88号,grid=310104014024001" in before[0]
    assert "street=肇嘉浜路\\ 1号,grid=310104003019001" in after[0] and "2000" in after[0]


def test_a_batch_that_mixes_devices_labels_each_reading_by_its_own() -> None:
    lines = _lines(FACTS, at("wl-1"), at("wl-9", unit="cm"), at("wl-1", "counter", "n"),
                   at("wl-2"), at("wl-9", "battery", "V"))  # fmt: skip
    tags = [dict(t.split("=", 1) for t in line.split(" value=")[0].split(",")[1:])
            for line in lines]  # fmt: skip
    assert [(t["device"], t.get("district", ""), t.get("unit", "")) for t in tags] == [
        ("wl-1", "310104", "m"), ("wl-9", "", "cm"), ("wl-1", "310104", ""),
        ("wl-2", "310106", "m"), ("wl-9", "", "V"),
    ]  # fmt: skip


def test_the_plan_carries_the_facts_it_was_made_with() -> None:
    """What the sinks label the step's telemetry by (the core only hands them on: no I/O)."""
    core = IngestCore(Topics("p"))
    msg = batch("gw1", [at("wl-1")], seq=1)
    decoded = core.decode([Raw(Topics("p").telemetry("gw1"), msg.model_dump_json().encode())], 1000)
    assert decoded.devices() == {("gw1", "wl-1")}  # what the shell asks the registry about
    plan = core.plan(decoded, set(), FACTS)
    assert plan.facts is FACTS and [len(b.readings) for b in plan.telemetry] == [1]
    assert core.plan(core.decode([], 1000), set()).facts == NO_FACTS
