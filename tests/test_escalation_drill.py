"""A case drill: ``--escalation-scale`` shortens every time of the case workflow (filing hold,
time limit, verification window), so that a centre can rehearse filing, dispatch and urging in
seconds; the start-up banner names every platform topic.

The drill runs through a whole ``central run`` (in-process) and a real mosquitto: an alert goes in
on the gateway's topic, its case's steps come out on the platform lifecycle topic.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from device_registry.alerts.lifecycle import due_at
from device_registry.alerts.operations import Policy
from device_registry.delivery.escalator import period_s
from gridwatch.ground.contract import Topics
from gridwatch.top.central import banner
from gridwatch.top.cli import build_parser
from tests._central_helpers import now_ms, publisher
from tests._ops_helpers import ponding
from tests.services import Mosquitto
from tests.test_registry_api import central

T0 = 1_700_000_000_000
MIN = 60_000
PONDING = Policy().catalogue.lookup("0406", "310104")
assert PONDING is not None
HIGH = (PONDING.filing.above or 0.15) + 0.07


@pytest.mark.parametrize(("area", "scale"), [("A", 1.0), ("A", 0.01), ("B", 0.01), ("C", 0.5)])
def test_due_at_under_a_drill(area: str, scale: float) -> None:
    limit = PONDING.limit_min(area)
    assert due_at(limit, T0, scale) == T0 + round(limit * MIN * scale)
    assert due_at(None, T0, 0.01) is None  # no limit stays no limit


@pytest.mark.parametrize(
    ("every_s", "scale", "period"), [(5.0, 1.0, 5.0), (5.0, 0.01, 0.5), (5.0, 0.001, 0.2)]
)
def test_the_clock_looks_more_often_in_a_drill(every_s: float, scale: float, period: float) -> None:
    assert period_s(every_s, scale) == pytest.approx(period)


@pytest.mark.parametrize(
    ("given", "scale"),
    [("0.01", 0.01), ("1", 1.0), ("0", None), ("-1", None), ("2", None), ("x", None),
     ("nan", None), ("inf", None)],
)  # fmt: skip
def test_escalation_scale_option(given: str, scale: float | None, capsys: Any) -> None:
    for cmd in (["central", "run"], ["bridge", "run"]):
        if scale is None:
            with pytest.raises(SystemExit):
                build_parser().parse_args([*cmd, "--escalation-scale", given])
            assert "not a scale" in capsys.readouterr().err
        else:
            args = build_parser().parse_args([*cmd, "--escalation-scale", given])
            assert math.isclose(args.escalation_scale, scale)
    assert build_parser().parse_args(["central", "run"]).escalation_scale == 1.0


def test_banner_names_every_platform_topic() -> None:
    line = banner("http://127.0.0.1:8080", "127.0.0.1:1883 (external)", "city", 1.0)
    for topic in ("city/platform/alert/#", "city/platform/lifecycle/#"):
        assert topic in line
    assert "escalation" not in line  # urging is a lifecycle step
    assert "DRILL" not in line
    assert "DRILL: alert time limits x0.01" in banner("u", "b", "city", 0.01)


async def test_a_drill_files_dispatches_and_urges_in_seconds(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    gw = prefix
    scale = 0.002
    argv = ["--mqtt-host", mosquitto.host, "--mqtt-port", str(mosquitto.port), "--prefix", prefix,
            "--data-dir", str(tmp_path), "--bridge-id", f"central-{prefix}",
            "--escalation-scale", str(scale)]  # fmt: skip
    async with (
        aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"platform-{prefix}") as sub,
        central(*argv),
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        await sub.subscribe(f"{prefix}/platform/lifecycle/#", qos=1)
        t = now_ms()
        event = ponding("a1", gateway=gw, at=t, value=HIGH)  # 漕溪北路: an A cell
        await pub.publish(Topics(prefix).alert(gw), event.model_dump_json(), qos=1)
        got: dict[str, dict[str, Any]] = {}
        async with asyncio.timeout(30):
            async for m in sub.messages:
                msg = json.loads(m.payload)  # type: ignore[arg-type]
                got.setdefault(msg["action"], msg)
                if "urge" in got:
                    break
    limit = PONDING.limit_min("A")
    filed = got["file"]
    assert filed["ts"] >= t + round(PONDING.filing.for_s * 1000 * scale)  # held, scaled
    dispatched = got["dispatch"]
    assert dispatched["due_at"] == filed["ts"] + round(limit * MIN * scale)
    assert dispatched["time_limit_min"] == limit  # the catalogue's minutes, not the drill's
    urged = got["urge"]
    assert urged["alert_id"] == f"{gw}:a1" and urged["actor"] == "centre" and urged["urged"]
    assert urged["ts"] > dispatched["due_at"]
