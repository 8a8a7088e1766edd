"""The bridge's pure core, as tables: decoding, sequence gaps, line protocol, planning."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from pydantic import BaseModel

from cloud_bridge.core import ClockWindow, IngestCore, Plan, Raw, Stats, scoped_alert_id
from cloud_bridge.decode import Cleared, Reason, Rejection, decode
from cloud_bridge.lineproto import batch_lines
from cloud_bridge.mqtt import Inbound
from cloud_bridge.pending import Pending
from cloud_bridge.sequence import GapTracker, Seq
from cloud_bridge.watched import Watched
from gridwatch.ground.contract import AlertState, Quality, Reading, TelemetryBatch, Topics
from tests._central_helpers import alert, batch, birth, reading

T = Topics("p")
GOOD = batch("g1", [reading("d1", "level", 1.0, 1000)], seq=1).model_dump_json().encode()


@pytest.mark.parametrize(
    ("topic", "payload", "expected"),
    [
        ("p/gw/g1/telemetry", GOOD, TelemetryBatch),
        ("p/gw/g1/status", b"", Cleared),
        ("p/gw/g1/status", birth("g1", 1, []).model_dump_json().encode(), "birth"),
        ("p/gw/g1/telemetry", b"{nope", Reason.BAD_JSON),
        ("p/gw/g1/telemetry", b"", Reason.BAD_JSON),
        ("p/gw/g1/telemetry", json.dumps({"v": 1, "id": "x"}).encode(), Reason.BAD_SCHEMA),
        ("p/gw/g1/telemetry", GOOD.replace(b'"v":1', b'"v":9'), Reason.BAD_VERSION),
        ("p/gw/g1/alert", GOOD, Reason.BAD_SCHEMA),  # telemetry on the alert topic
        ("p/gw/g2/telemetry", GOOD, Reason.GATEWAY_MISMATCH),
        ("p/gw/g1/cmd", GOOD, Reason.BAD_TOPIC),
        ("q/gw/g1/telemetry", GOOD, Reason.BAD_TOPIC),
        ("p/gw/g1/status", b'{"v":1,"kind":"zombie","gateway":"g1"}', Reason.BAD_SCHEMA),
    ],
)
def test_decode(topic: str, payload: bytes, expected: object) -> None:
    got = decode(T, topic, payload)
    if isinstance(expected, Reason):
        assert isinstance(got, Rejection) and got.reason is expected, got
    elif isinstance(expected, str):
        assert getattr(got, "kind", None) == expected
    else:
        assert isinstance(got, expected)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("observations", "expected"),
    [
        ([(1, 1), (1, 2), (1, 3)], [Seq.FIRST, Seq.NEXT, Seq.NEXT]),
        ([(1, 1), (1, 4)], [Seq.FIRST, (Seq.GAP, 2)]),
        ([(1, 5), (1, 5), (1, 3)], [Seq.FIRST, Seq.REPLAY, Seq.REPLAY]),
        ([(1, 7), (2, 0), (2, 1)], [Seq.FIRST, Seq.RESTART, Seq.NEXT]),  # numbering per session
        ([(1, 7), (2, 8)], [Seq.FIRST, Seq.NEXT]),  # numbering across sessions
        ([(1, 7), (2, 10)], [Seq.FIRST, (Seq.GAP, 2)]),
        # a gap repaired: the missing numbers come later, each filled once, in any order
        ([(1, 1), (1, 5), (1, 3), (1, 2), (1, 3), (1, 4)],
         [Seq.FIRST, (Seq.GAP, 3), Seq.FILLED, Seq.FILLED, Seq.REPLAY, Seq.FILLED]),
        # a repaired message keeps its original session, older than the current one
        ([(1, 1), (2, 4), (1, 2)], [Seq.FIRST, (Seq.GAP, 2), Seq.FILLED]),
        # a restart forgets the old numbering's gaps
        ([(1, 1), (1, 5), (2, 2), (2, 3), (1, 3)],
         [Seq.FIRST, (Seq.GAP, 3), Seq.RESTART, Seq.NEXT, Seq.REPLAY]),
    ],
)  # fmt: skip
def test_gap_tracker(observations: list[tuple[int, int]], expected: list[object]) -> None:
    tracker = GapTracker()
    got: list[object] = []
    for session, seq in observations:
        o = tracker.observe("g", "telemetry", session, seq)
        got.append((o.kind, o.missing) if o.kind is Seq.GAP else o.kind)
    assert got == expected


def _unchecked(
    device: str, point: str, value: object, ts: int, q: Quality = Quality.GOOD
) -> Reading:
    # the contract refuses these ids and NaN at decode; the sink escapes and skips them anyway
    return Reading.model_construct(device=device, point=point, value=value, ts=ts, quality=q)


def test_line_protocol() -> None:
    msg = TelemetryBatch.model_construct(id="m", gateway="g 1", seq=1, session=1, readings=[
        _unchecked("d,1", "lev=el", 1.5, 1000),
        _unchecked("d2", "alarm", False, 1001),
        _unchecked("d3", "n", 7, 1002, Quality.OUT_OF_RANGE),
        _unchecked("d4", "text", "hi", 1003),
        _unchecked("d5", "x", None, 1004, Quality.COMM_ERROR),
        _unchecked("d6", "x", float("nan"), 1005),
    ])  # fmt: skip
    lines: list[str] = []
    assert batch_lines(msg, "gw", lines) == 3
    assert lines == [
        r"gw,gateway=g\ 1,device=d\,1,point=lev\=el,quality=good value=1.5 1000",
        "gw,gateway=g\\ 1,device=d2,point=alarm,quality=good value=0.0 1001",
        "gw,gateway=g\\ 1,device=d3,point=n,quality=out_of_range value=7.0 1002",
    ]


def test_plan_drops_duplicates_and_coalesces_last_values() -> None:
    core = IngestCore(T)
    first = batch(
        "g1", [reading("d1", "level", 1.0, 1000), reading("d1", "level", 3.0, 3000)], seq=1
    )
    second = batch("g1", [reading("d1", "level", 2.0, 2000)], seq=2)
    known = batch("g1", [reading("d1", "level", 9.0, 9000)], seq=3)
    ev = alert("g1", "a1", AlertState.RAISED, 1000)
    raws = [
        Raw(T.telemetry("g1"), m.model_dump_json().encode()) for m in (first, second, first, known)
    ]
    raws.append(Raw(T.alert("g1"), ev.model_dump_json().encode()))
    raws.append(Raw(T.telemetry("g1"), b"junk"))
    decoded = core.decode(raws, now=5000)
    plan = core.plan(decoded, seen={known.id})
    assert [b.id for b in plan.telemetry] == [first.id, second.id]
    assert core.stats.duplicates == 2 and core.stats.rejected == {"bad_json": 1}
    assert {k: (r.value, r.ts) for k, r in plan.changes.latest.items()} == {
        ("g1", "d1", "level"): (3.0, 3000)
    }
    assert plan.changes.device_seen == {("g1", "d1"): 3000}
    assert set(plan.changes.seen_ids) == {first.id, second.id, ev.id}
    [out] = plan.platform
    assert out.topic == "p/platform/alert/north/W-01/major"
    assert json.loads(out.payload)["alert_id"] == "g1:a1"  # scoped by its gateway
    assert out.transition == f"g1/{ev.id}"  # the key the platform is deduped by
    [q] = plan.changes.quarantine
    assert (q.reason, q.payload, q.received_at) == ("bad_json", b"junk", 5000)


def test_changes_merge_keeps_the_newest_per_key() -> None:
    core = IngestCore(T)
    older = batch(
        "g1",
        [reading("d1", "level", 1.0, 2000), reading("d2", "x", None, 2000, Quality.COMM_ERROR)],
    )
    newer = batch("g1", [reading("d1", "level", 0.5, 1000), reading("d2", "x", 4.0, 3000)])
    plans = [
        core.plan(core.decode([Raw(T.telemetry("g1"), m.model_dump_json().encode())], now), set())
        for m, now in ((older, 10), (newer, 20))
    ]
    merged = plans[0].changes
    merged.merge(plans[1].changes)
    assert merged.now == 20
    assert {k: r.value for k, r in merged.latest.items()} == {
        ("g1", "d1", "level"): 1.0,  # the replayed older reading does not win
        ("g1", "d2", "x"): 4.0,
    }
    assert merged.device_seen == {("g1", "d1"): 2000, ("g1", "d2"): 3000}
    assert set(merged.seen_ids) == {older.id, newer.id}


async def test_pending_groups_steps_for_a_window_or_until_full() -> None:
    core = IngestCore(T)

    def step(n: int) -> tuple[list[Inbound], Plan]:
        msg = batch("g1", [reading("d1", "level", float(n), n)])
        raw = Inbound(T.telemetry("g1"), msg.model_dump_json().encode(), n, 1)
        return [raw], core.plan(core.decode([raw], n), set())

    pending = Pending(window_s=30, max_messages=2)
    for n in (1, 2):
        pending.add(*step(n), Stats())
    async with asyncio.timeout(1):  # full: no need to wait for the window
        group = await pending.take()
    assert (group.messages, len(group.changes.seen_ids)) == (2, 2)
    assert len(pending.unfinished) == 2
    pending.committed(group)
    assert pending.unfinished == set()
    now = Pending(window_s=0, max_messages=100)
    now.add(*step(3), Stats())
    async with asyncio.timeout(1):
        assert (await now.take()).messages == 1


def _json_with(msg: BaseModel, path: tuple[str | int, ...], value: object) -> bytes:
    doc = json.loads(msg.model_dump_json())
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return json.dumps(doc).encode()


_B = batch("g1", [reading("d1", "level", 1.0, 1000)], seq=1)
_A = alert("g1", "a1", AlertState.RAISED, 1000)


@pytest.mark.parametrize(
    ("leaf", "payload", "expected"),
    [
        ("telemetry", _json_with(_B, ("readings", 0, "value"), 10**30), Reason.OUT_OF_RANGE),
        ("telemetry", _json_with(_B, ("readings", 0, "value"), float("nan")), Reason.OUT_OF_RANGE),
        ("telemetry", _json_with(_B, ("readings", 0, "value"), "x" * 800_000), Reason.OUT_OF_RANGE),
        ("telemetry", _json_with(_B, ("readings", 0, "device"), "a b"), Reason.OUT_OF_RANGE),
        ("telemetry", _json_with(_B, ("readings", 0, "value"), [1]), Reason.BAD_SCHEMA),
        ("alert", _json_with(_A, ("ts",), 2**63), Reason.OUT_OF_RANGE),
        ("status", _json_with(birth("g1", 1, []), ("session",), 2**63), Reason.OUT_OF_RANGE),
        ("telemetry", b'{"readings": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", Reason.BAD_JSON),
        ("telemetry", b'{"v": 1, "id": "\xff\xfe"}', Reason.BAD_JSON),
        ("telemetry", b'{"v": 1, "id": "\\ud800"}', Reason.BAD_JSON),  # a lone surrogate
    ],
)
def test_decode_refuses_what_is_out_of_range(leaf: str, payload: bytes, expected: Reason) -> None:
    got = decode(T, f"p/gw/g1/{leaf}", payload)
    assert isinstance(got, Rejection) and got.reason is expected, got
    assert len(got.detail) <= 500


NOW = 1_800_000_000_000
H = 3_600_000


@pytest.mark.parametrize(
    ("ts", "refused"),
    [
        (NOW, False),
        (NOW + 5 * 60_000, False),
        (NOW + 5 * 60_000 + 1, True),
        (NOW - 24 * H, False),
        (NOW - 24 * H - 1, True),
        (253_402_300_799_999, True),  # year 9999
        (0, True),
    ],
)
def test_clock_window(ts: int, refused: bool) -> None:
    assert ClockWindow(back_ms=24 * H, ahead_ms=5 * 60_000).refuses(ts, NOW) is refused


@pytest.mark.parametrize(
    ("gateway", "alert_id", "key"),
    [
        ("gw-a", "gw-a:d1:level_high:1700", "gw-a:d1:level_high:1700"),  # the edge's own ids
        ("gw-a", "fire-1", "gw-a:fire-1"),
        ("gw-b", "gw-a:d1:level_high:1700", "gw-b:gw-a:d1:level_high:1700"),
        ("gw-b", "gw-bx:1", "gw-b:gw-bx:1"),
    ],
)
def test_alerts_are_scoped_by_their_gateway(gateway: str, alert_id: str, key: str) -> None:
    assert scoped_alert_id(gateway, alert_id) == key


def test_plan_refuses_times_outside_the_clock_window() -> None:
    core = IngestCore(T, window=ClockWindow(back_ms=24 * H, ahead_ms=5 * 60_000))
    year_9999 = 253_402_300_799_999
    tele = batch("g1", [reading("d1", "level", 9.0, year_9999), reading("d1", "level", 1.0, NOW),
                        reading("d2", "level", 2.0, NOW - 48 * H)], seq=1)  # fmt: skip
    future = alert("g1", "a1", AlertState.RAISED, NOW + H, seq=1)
    fine = alert("g1", "a2", AlertState.RAISED, NOW, seq=2)
    raws = [Raw(T.telemetry("g1"), tele.model_dump_json().encode()),
            Raw(T.alert("g1"), future.model_dump_json().encode()),
            Raw(T.alert("g1"), fine.model_dump_json().encode())]  # fmt: skip
    plan = core.plan(core.decode(raws, NOW), seen=set())
    assert {k: r.ts for k, r in plan.changes.latest.items()} == {("g1", "d1", "level"): NOW}
    assert plan.changes.device_seen == {("g1", "d1"): NOW}
    assert [len(b.readings) for b in plan.telemetry] == [1]  # nor to the time-series store
    assert [json.loads(o.payload)["alert_id"] for o in plan.platform] == ["g1:a2"]
    assert [a.alert_id for a in plan.changes.alerts] == ["g1:a2"]
    [q] = plan.changes.quarantine
    assert (q.topic, q.reason) == (T.alert("g1"), "clock")
    assert "1 h after the centre's clock" in q.detail
    assert core.stats.refused == {"clock": 3}  # two readings, one alert
    assert set(plan.changes.seen_ids) == {tele.id, future.id, fine.id}  # a redelivery is a dupe


# ---- a store as the bridge's calls meet it (``cloud_bridge.watched``) -------------------------

# (outcomes of calls at 1000, 2000, ...: True ok, False failed; then: failures in a row, failing
# since, the event set, log lines at ERROR and INFO)
WATCHED: list[tuple[list[bool], int, int | None, bool, int, int]] = [
    ([], 0, None, False, 0, 0),
    ([False], 1, 1000, True, 1, 0),
    ([False, False, False], 3, 1000, True, 1, 0),  # one line per outage, not per call
    ([False, False, True], 0, None, False, 1, 1),  # its end: one INFO line
    ([False, True, False], 1, 3000, True, 2, 1),  # a new outage
    ([True, True], 0, None, False, 0, 0),
]  # fmt: skip


@pytest.mark.parametrize(("calls", "failures", "since", "failing", "errors", "infos"), WATCHED)
def test_a_watched_store_tells_the_report_the_log_and_the_waiting_steps_alike(
    calls: list[bool], failures: int, since: int | None, failing: bool, errors: int, infos: int,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    caplog.set_level(logging.INFO, logger="test.watched")
    store = Watched(logging.getLogger("test.watched"), "registry", "messages stay unacknowledged")
    for i, ok in enumerate(calls, start=1):
        if ok:
            store.ok(i * 1000)
        else:
            store.failed(i * 1000, ConnectionRefusedError("connection refused"))
    assert (store.state.failures, store.state.failing_since) == (failures, since)
    assert store.failing.is_set() is failing and store.outage.down is failing
    levels = [r.levelno for r in caplog.records]
    assert (levels.count(logging.ERROR), levels.count(logging.INFO)) == (errors, infos)
