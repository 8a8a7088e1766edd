"""``gridwatch sim district``: the script of a district's gateways (pure: tables and a fixed start)
and a short seeded run against the real centre (mosquitto, ``central run``, VictoriaMetrics)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import TypeAdapter

from gridwatch.ground.contract import (
    AlertEvent,
    GatewayHealth,
    PlatformAlert,
    Status,
    TelemetryBatch,
    Topics,
)
from gridwatch.top.sim.district import (
    LEVEL_LINE_M,
    District,
    DistrictOptions,
    GatewayScript,
    plan,
)
from gridwatch.top.sim.districtrun import (
    DistrictSim,
    Events,
    RunOptions,
    load_credentials,
)
from gridwatch.top.sim.xuhui import DISTRICT, STORM_PATH, STREETS
from tests.conftest import ADMIN_TOKEN
from tests.fieldkit import Listener, listen
from tests.services import Mosquitto, Victoria, central_run, eventually

T0 = 1_796_000_000_000
MODELS: dict[str, Any] = {
    "telemetry": TelemetryBatch, "alert": AlertEvent, "health": GatewayHealth,
}  # fmt: skip
STATUS: TypeAdapter[Any] = TypeAdapter(Status)


def script_of(district: District, until_s: float, t0: int = T0) -> list[tuple[str, str, bytes]]:
    """Every gateway's messages up to ``until_s``: (gateway, leaf, payload), connects included."""
    out: list[tuple[str, str, bytes]] = []
    for gw in district.gateways:
        s = GatewayScript(district, gw, t0)
        birth, death = s.connect(gw.start_s)
        out += [(gw.id, "birth", birth), (gw.id, "death", death)]
        out += [(gw.id, o.leaf, o.payload) for o in s.step(until_s)]
    return out


STORMY = DistrictOptions(seed=7, gateways=26, devices=40, interval_s=2, storm_at_s=5,
                         storm_step_s=3, storm_ramp_s=4, storm_hold_s=4, flood_share=0.5)  # fmt: skip


# ---- the pure script ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ((1, T0), (1, T0), True),
        ((1, T0), (2, T0), False),  # another seed: other values, other grid cells
        ((1, T0), (1, T0 + 1000), False),  # another start: other ids and times
    ],
)
def test_the_same_seed_and_start_give_the_same_messages(
    a: tuple[int, int], b: tuple[int, int], same: bool
) -> None:
    def run(seed: int, t0: int) -> list[tuple[str, str, bytes]]:
        opts = DistrictOptions(seed=seed, gateways=5, devices=20, interval_s=2, storm_at_s=5,
                               storm_step_s=1, deaths=1, death_window_s=(3, 6))  # fmt: skip
        return script_of(plan(opts), 60, t0)

    first, second = run(*a), run(*b)
    assert len(first) > 100
    assert (first == second) is same


def test_every_message_is_one_the_contract_accepts() -> None:
    district = plan(STORMY)
    kinds: set[str] = set()
    for _, leaf, payload in script_of(district, 60):
        if leaf in ("birth", "death"):
            STATUS.validate_json(payload)
        else:
            MODELS[leaf].model_validate_json(payload)
        kinds.add(leaf)
    assert kinds == {"birth", "death", "telemetry", "alert", "health"}


def test_a_birth_tells_each_device_profile_interval_and_place() -> None:
    district = plan(STORMY)
    gw = district.gateways[3]
    birth = STATUS.validate_json(GatewayScript(district, gw, T0).connect(0)[0])
    assert len(birth.device_info) == STORMY.devices == len(birth.devices)
    info = birth.device_info[0]
    assert info.interval_s == 2 and info.profile in {
        "water-level-ultrasonic", "manhole-tilt", "smoke-detector-modbus", "gas-detector"}  # fmt: skip
    assert info.location is not None
    assert (info.location.district, info.location.street) == (DISTRICT, STREETS[3].name)
    assert info.location.grid.startswith(STREETS[3].code + "-G")


def test_gateways_spread_over_all_thirteen_streets() -> None:
    district = plan(DistrictOptions(gateways=39, devices=1))
    streets = [g.street for g in district.gateways]
    assert {s: streets.count(s) for s in set(streets)} == {s.code: 3 for s in STREETS}
    assert len({g.id for g in district.gateways}) == 39


def test_the_storm_crosses_the_district_street_by_street() -> None:
    district = plan(STORMY)
    first_raise: dict[str, int] = {}
    states: dict[str, list[str]] = {}
    for gw in district.gateways:
        for out in GatewayScript(district, gw, T0).step(100):
            if out.leaf == "alert":
                ev = AlertEvent.model_validate_json(out.payload)
                states.setdefault(ev.alert_id, []).append(ev.state)
                assert ev.location.street == gw.street_name and ev.category == "040401"
                if ev.state == "raised":
                    assert isinstance(ev.value, float) and ev.value > LEVEL_LINE_M
                    first_raise[gw.street] = min(first_raise.get(gw.street, ev.ts), ev.ts)
    # every street, in the storm's order, and every alert raised once and cleared once
    assert sorted(first_raise, key=first_raise.__getitem__) == list(STORM_PATH)
    assert set(map(tuple, states.values())) == {("raised", "cleared")}


def test_what_a_gateway_reads_while_cut_off_is_historical() -> None:
    opts = DistrictOptions(gateways=4, devices=10, interval_s=1, deaths=1, death_window_s=(5, 6),
                           down_s=4)  # fmt: skip
    district = plan(opts)
    [gw] = [g for g in district.gateways if g.outage is not None]
    assert gw.outage is not None
    lost, back = gw.outage
    flags = {
        (r.ts, r.historical)
        for o in GatewayScript(district, gw, T0).step(15)
        if o.leaf == "telemetry"
        for r in TelemetryBatch.model_validate_json(o.payload).readings
    }
    assert flags and all(h == (T0 + lost * 1000 <= ts < T0 + back * 1000) for ts, h in flags)
    assert any(h for _, h in flags)


def test_each_connection_is_a_newer_session() -> None:
    district = plan(DistrictOptions(gateways=1, devices=1))
    s = GatewayScript(district, district.gateways[0], T0)
    sessions = [STATUS.validate_json(s.connect(t)[1]).session for t in (0, 10, 20)]
    assert sessions == sorted(set(sessions)) and sessions[0] >= T0


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"gateways": 0}, "gateways must be more than 0"),
        ({"interval_s": -1}, "interval_s must be more than 0"),
        ({"deaths": 30}, "deaths must be 0..gateways (20), got 30"),
        ({"flood_share": 2}, "flood_share must be 0..1"),
    ],
)
def test_options_that_cannot_run_are_refused(change: dict[str, Any], says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(").replace(")", r"\)")):
        DistrictOptions(**change)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gw-a,gw-gw-a,secret\n# a comment\n\ngw-b,gw-gw-b,other\n",
         {"gw-a": ("gw-gw-a", "secret"), "gw-b": ("gw-gw-b", "other")}),
        ("gw-a,gw-gw-a\n", "creds.csv:1: expected gateway,username,password, got 2 field(s)"),
        ("gw-a,gw-gw-a,s\ngw-b,,s\n", "creds.csv:2: expected gateway,username,password"),
    ],
)  # fmt: skip
def test_credentials_file(tmp_path: Path, text: str, expected: Any) -> None:
    path = tmp_path / "creds.csv"
    path.write_text(text)
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=re.escape(expected)):
            load_credentials(path)
    else:
        assert load_credentials(path) == expected


def test_two_shards_run_every_gateway_once() -> None:
    district = plan(DistrictOptions(gateways=7, devices=1))
    shards = [DistrictSim(district, RunOptions(shard=(k, 2))).plans for k in (0, 1)]
    ids = [g.id for shard in shards for g in shard]
    assert sorted(ids) == sorted(g.id for g in district.gateways)


def test_a_gateway_without_credentials_is_named_before_anything_connects() -> None:
    district = plan(DistrictOptions(gateways=3, devices=1))
    creds = {district.gateways[0].id: ("u", "p")}
    with pytest.raises(
        ValueError, match=f"no credentials for 2 gateway.*{district.gateways[1].id}"
    ):
        DistrictSim(district, RunOptions(credentials=creds))


# ---- against the real centre -------------------------------------------------------------------


def get_json(url: str) -> Any:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.loads(r.read())


@pytest.fixture
def central(mosquitto: Mosquitto, victoria: Victoria, prefix: str, tmp_path: Path) -> Iterator[str]:
    """``gridwatch central run`` (registry on SQLite, bridge, platform publisher) on the
    session's broker and VictoriaMetrics."""
    with central_run(mosquitto, victoria, prefix, tmp_path, check_exit=False) as url:
        yield url


WITHIN_S = 20.0
"""How long another process's state may take to show here, on a busy machine."""


def canonical(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True)


def expected_on_wire(district: District, t0: int, leaf: str, until_s: float) -> list[str]:
    docs = []
    for gw in district.gateways:
        s = GatewayScript(district, gw, t0)
        docs += [canonical(json.loads(o.payload)) for o in s.step(until_s) if o.leaf == leaf]
    return docs


def stale_of(url: str, gw: str) -> list[str]:
    return [d["status"] for d in get_json(f"{url}/api/v1/devices?gateway={gw}")]


async def test_a_seeded_district_through_the_real_centre(
    central: str, mosquitto: Mosquitto, victoria: Victoria, prefix: str, tmp_path: Path
) -> None:
    opts = DistrictOptions(seed=3, gateways=8, devices=10, interval_s=1, health_s=5, ramp_s=1,
                           storm_at_s=3, storm_step_s=0.5, storm_ramp_s=2, storm_hold_s=2,
                           flood_share=1.0, deaths=1, death_window_s=(6, 6.5), down_s=6)  # fmt: skip
    district = plan(opts)
    [cut] = [g for g in district.gateways if g.outage is not None]
    t0 = time.time_ns() // 1_000_000
    events = io.StringIO()
    sim = DistrictSim(district, RunOptions(port=mosquitto.port, prefix=prefix), t0_ms=t0,
                      events=Events(events))  # fmt: skip
    async with listen(mosquitto.port, f"{prefix}/#") as seen:
        task = asyncio.create_task(sim.run())
        try:
            await _check_the_centre(central, victoria, prefix, district, cut.id, seen, sim)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    # same seed and start: what the broker carried is what the script says, message by message
    t_end = (time.time_ns() // 1_000_000 - t0) / 1000
    wire = {canonical(p) for t, p, _ in seen.messages if t.endswith("/telemetry")}
    script = expected_on_wire(district, t0, "telemetry", t_end + 5)
    early = set(expected_on_wire(district, t0, "telemetry", t_end - 3))
    assert wire <= set(script), "the wire carried a batch the script does not have"
    assert early <= wire, "a batch of the script never reached the broker"
    noted = [json.loads(line) for line in events.getvalue().splitlines()]
    assert [e["gateway"] for e in noted if e["event"] == "cut"] == [cut.id]
    assert any(e["event"] == "alert" and e["state"] == "raised" for e in noted)


async def _check_the_centre(
    central: str, victoria: Victoria, prefix: str, district: District, cut: str,
    seen: Listener, sim: DistrictSim,
) -> None:  # fmt: skip
    ids = {g.id for g in district.gateways}
    # the births registered every gateway and its devices, with their profiles
    await eventually(lambda: get_json(f"{central}/api/v1/gateways"),
                     lambda gws: ids <= {g["id"] for g in gws}, WITHIN_S)  # fmt: skip
    devices = await eventually(
        lambda: get_json(f"{central}/api/v1/devices?limit=1000"),
        lambda ds: len([d for d in ds if d["gateway"] in ids]) == 80,
        WITHIN_S,
    )
    assert all(d["profile"] for d in devices if d["gateway"] in ids)
    # a storm alert reaches the city platform's topic, under Xuhui's code
    await seen.wait_for(lambda s: any("/platform/alert/" in t for t, _, _ in s.messages), 30)
    topic, doc, _ = next(m for m in seen.messages if "/platform/alert/" in m[0])
    alert = PlatformAlert.model_validate(doc)
    assert topic == Topics(prefix).platform_alert(DISTRICT, "040401", "major")
    assert alert.location.district == DISTRICT and alert.gateway in ids
    # the cut gateway's Death marks its devices stale; its next Birth brings them back
    await eventually(lambda: stale_of(central, cut), lambda st: st == ["stale"] * 10, WITHIN_S)
    await eventually(lambda: stale_of(central, cut), lambda st: st == ["online"] * 10, WITHIN_S)
    # the telemetry is in the store, every gateway's
    series = await eventually(
        lambda: victoria.export(f'gridwatch_value{{gateway=~"{"|".join(ids)}"}}'),
        lambda ss: ids == {s["metric"]["gateway"] for s in ss},
        WITHIN_S,
    )
    assert {s["metric"]["point"] for s in series} >= {"level", "battery", "lel"}
    # the centre acknowledges what it stored: the simulator holds only the last moments' messages
    assert sim.stats.acked > 0
    held, oldest = sim.unacked()
    assert oldest is None or oldest < 10, f"{held} messages unacknowledged for {oldest:.1f} s"


# ---- the command -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["sim", "district", "--gateways", "0"], "gateways must be more than 0"),
        (["sim", "district", "--shard", "2/2"], "--shard '2/2': expected K/N with 0 <= K < N"),
        (["sim", "district", "--credentials", "/nonexistent/creds.csv"], "No such file"),
        (["sim"], "-c CONFIG is required"),
    ],
)
def test_the_command_refuses_what_cannot_run(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from gridwatch.top.cli import main

    assert main(argv) == 2
    out = capsys.readouterr()
    assert says in out.out + out.err


async def test_each_gateway_logs_in_with_its_own_account(tmp_path: Path, prefix: str) -> None:
    district = plan(DistrictOptions(gateways=3, devices=2))
    users = {f"gw-{g.id}": f"pw-{g.index}" for g in district.gateways}
    broker = Mosquitto(tmp_path / "mq", users={**users, "watch": "watch-pw"}).start()
    creds = tmp_path / "creds.csv"
    creds.write_text("".join(f"{g.id},gw-{g.id},pw-{g.index}\n" for g in district.gateways))
    try:
        async with listen(broker.port, f"{prefix}/gw/+/status", "watch", "watch-pw") as seen:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gridwatch.top.cli", "sim", "district", "--gateways", "3",
                "--devices", "2", "--mqtt-port", str(broker.port), "--prefix", prefix,
                "--credentials", str(creds), "--duration", "4",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            out, _ = await asyncio.wait_for(proc.communicate(), 60)
            await seen.wait_for(lambda s: len([p for p in s.on("status") if p["kind"] == "birth"])
                                == 3)  # fmt: skip
        assert proc.returncode == 0, out.decode()
        summary = json.loads(out.decode().split("sim district summary ", 1)[1].splitlines()[0])
        assert summary["births"] == 3 and summary["telemetry"] > 0
        # a clean stop says goodbye: each session's Death, retained
        assert len([p for p in seen.on("status") if p["kind"] == "death"]) == 3
        assert "not authorised" not in out.decode() and "bad username" not in out.decode()
    finally:
        broker.stop()
