"""Fuzzing the bridge's decoder with hypothesis: documented-shape messages with one field set to
something hostile (numbers beyond 64 bits, NaN, lone surrogates, huge strings, deep nesting,
wrong types), and raw garbage.

Properties: the decoder never raises; it returns a message or the reason it refused one; nothing
it accepts breaks the contract's ranges; and a mixed batch of good and refused messages through
the real bridge and registry keeps the lane moving (good ones stored, bad ones quarantined once).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud_bridge import Bridge, SqliteSink
from cloud_bridge.core import IngestCore, Raw
from cloud_bridge.decode import Cleared, Reason, Rejection, decode
from device_registry import RegistryStore
from gridwatch.ground.contract import INT64_MAX, AlertState, Topics
from tests._central_helpers import (
    alert,
    batch,
    birth,
    bridge_config,
    now_ms,
    publisher,
    reading,
    running,
    until,
)
from tests.services import Mosquitto

T = Topics("fz")
GW = "gw-fuzz"
_T0 = now_ms()
VALID: dict[str, dict[str, Any]] = {
    "telemetry": batch(GW, [reading("d1", "level", 1.5, _T0), reading("d2", "n", 7, _T0)]).model_dump(
        mode="json"
    ),
    "alert": alert(GW, "a1", AlertState.RAISED, _T0).model_dump(mode="json"),
    "health": {"v": 1, "kind": "health", "id": "h1", "gateway": GW, "seq": 1, "session": 1,
               "ts": _T0, "cpu_percent": 3.0,
               "devices": [{"device": "d1", "online": True, "response_ms": 4.0}]},
    "status": birth(GW, 1, ["d1"]).model_dump(mode="json"),
}  # fmt: skip

_HUGE_INTS = st.sampled_from([2**63, -(2**63) - 1, 10**30, 2**64, -(10**400)])
_ANY_CHAR = st.characters(exclude_categories=())  # lone surrogates included
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    _HUGE_INTS,
    st.floats(),  # NaN and the infinities included
    st.text(_ANY_CHAR, max_size=50),
    st.integers(60, 100_000).map(lambda n: "x" * n),
    st.sampled_from(["\x00", "gw/+/#", "a b", "\u202e", "é" * 70]),
)
_JSON = st.recursive(
    _SCALARS,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=8,
)


@st.composite
def _path(draw: st.DrawFn, doc: Any) -> list[str | int]:
    """A path to some node of ``doc`` (a field, an item of a list, a nested field)."""
    path: list[str | int] = []
    node = doc
    while isinstance(node, dict | list) and node:
        key = draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
        if not draw(st.booleans()):
            break
    return path


def _encode(doc: Any, ascii_only: bool) -> bytes:
    # NaN goes out as the bare token; unescaped lone surrogates become invalid UTF-8
    return json.dumps(doc, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


@st.composite
def hostile(draw: st.DrawFn) -> tuple[str, bytes]:
    """(leaf, payload): a documented message with one field changed, dropped or added, or junk."""
    leaf = draw(st.sampled_from(sorted(VALID)))
    doc = copy.deepcopy(VALID[leaf])
    how = draw(st.sampled_from(["set", "set", "set", "drop", "add", "junk", "nest"]))
    if how == "junk":
        return leaf, draw(st.binary(max_size=300))
    if how == "nest":
        depth = draw(st.integers(1, 20_000))
        return leaf, ("[" * depth + "]" * depth).encode()
    path = draw(_path(doc))
    if not path:
        return leaf, _encode(draw(_JSON), draw(st.booleans()))
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    if how == "drop" and isinstance(parent, dict):
        del parent[path[-1]]
    elif how == "add" and isinstance(parent, dict):
        parent[draw(st.text(_ANY_CHAR, max_size=8))] = draw(_JSON)
    else:
        parent[path[-1]] = draw(_JSON)
    return leaf, _encode(doc, draw(st.booleans()))


def _within_ranges(value: Any) -> bool:
    """Independent of the models: what the store and JSON clients need of an accepted message."""
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return -INT64_MAX - 1 <= value <= INT64_MAX
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return "\x00" not in value and len(value) <= 1000
    if isinstance(value, list):
        return all(_within_ranges(v) for v in value)
    if isinstance(value, dict):
        return all(_within_ranges(v) for v in value.values())
    return False


@settings(max_examples=200, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
@given(hostile())
def test_the_decoder_never_crashes_and_accepts_only_what_is_in_range(
    message: tuple[str, bytes],
) -> None:
    leaf, payload = message
    got = decode(T, T.gateway(GW, leaf), payload)
    if isinstance(got, Rejection):
        assert got.reason in set(Reason) and len(got.detail) <= 500
        return
    if isinstance(got, Cleared):  # a deleted retained status
        assert (leaf, payload) == ("status", b"")
        return
    dumped = got.model_dump_json()
    assert type(got).model_validate_json(dumped) == got  # round-trips: nothing lost or invented
    assert _within_ranges(json.loads(dumped, parse_constant=lambda c: float(c)))
    core = IngestCore(T)  # and planning it does not crash either
    core.plan(core.decode([Raw(T.gateway(GW, leaf), payload)], now_ms()), seen=set())


def test_planning_survives_json_nested_past_the_parsers_depth() -> None:
    """Found by the mixed-batch test: the decoder refused such a payload, then planning looked
    for its (stream, seq) with a plain json.loads, which raised RecursionError and killed the
    lane. Planning must treat it as any refused message."""
    core = IngestCore(T)
    for leaf in ("telemetry", "alerts", "health"):
        for payload in (b"[" * 100_000, b'{"a":' * 50_000 + b"1" + b"}" * 50_000):
            raw = Raw(T.gateway(GW, leaf), payload)
            core.plan(core.decode([raw], now_ms()), seen=set())


def _corpus(count: int) -> list[tuple[str, bytes]]:
    """``count`` hostile messages the decoder refuses, from the same generator, reproducibly."""
    found: list[tuple[str, bytes]] = []

    @settings(max_examples=count * 3, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))  # fmt: skip
    @given(hostile())
    def collect(message: tuple[str, bytes]) -> None:
        leaf, payload = message
        if len(found) < count and isinstance(decode(T, T.gateway(GW, leaf), payload), Rejection):
            found.append(message)

    collect()
    return found


async def test_a_mixed_batch_of_good_and_hostile_messages_keeps_the_lane_moving(
    mosquitto: Mosquitto, registry_url: str, prefix: str, tmp_path: Path
) -> None:
    topics, t = Topics(prefix), now_ms()
    bad = _corpus(40)
    good = [batch(GW, [reading(f"d{i}", "level", float(i), t)]) for i in range(20)]
    store = await RegistryStore.open(registry_url)
    sink = await SqliteSink.open(tmp_path / "telemetry.db")
    cfg = bridge_config(mosquitto.host, mosquitto.port, prefix, tmp_path)
    try:
        async with (
            running(Bridge(cfg, store, sink)) as b,
            publisher(mosquitto.host, mosquitto.port) as pub,
        ):
            for i, (leaf, payload) in enumerate(bad):
                await pub.publish(topics.gateway(GW, leaf), payload, qos=1)
                if i % 2 == 0:
                    msg = good[i // 2]
                    await pub.publish(topics.telemetry(GW), msg.model_dump_json(), qos=1)
            await until(b, lambda s: s.ingested["telemetry"] == len(good))
            stats = b.committed
            kept = await store.quarantine(limit=1000)
            devices = {d.id: d for d in await store.devices(gateway=GW)}
    finally:
        await sink.close()
        await store.close()
    assert sum(stats.rejected.values()) == len(bad) == len(kept)  # each quarantined once
    assert stats.write_failures == 0
    assert {f"{GW}:d{i}" for i in range(len(good))} <= set(devices)
    assert all(devices[f"{GW}:d{i}"].values["level"].value == float(i) for i in range(len(good)))
