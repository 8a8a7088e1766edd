"""An escalation drill: ``--escalation-scale`` shortens every alert time limit, so that a centre
can rehearse an escalation in seconds; the start-up banner names every platform topic.

The drill runs through a whole ``central run`` (in-process) and a real mosquitto: an alert goes in
on the gateway's topic, its lifecycle and escalation messages come out on the platform topics.
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
from gridwatch.ground.catalogue import default_catalogue_dir, load_catalogue
from gridwatch.ground.contract import Topics
from gridwatch.top.central import banner
from gridwatch.top.cli import build_parser
from tests._central_helpers import now_ms, publisher
from tests._ops_helpers import smoke
from tests.services import Mosquitto
from tests.test_registry_api import central

T0 = 1_700_000_000_000
MIN = 60_000


@pytest.mark.parametrize(
    ("category", "district", "scale", "due"),
    [
        ("2201", "310104", 1.0, T0 + 15 * MIN),  # in service: the catalogue's limit
        ("2201", "310104", 0.01, T0 + 9_000),  # 15 min -> 9 s
        ("0406", "310104", 0.01, T0 + 27_000),  # the district's 45 min, scaled
        ("0406", "310110", 0.5, T0 + 30 * MIN),  # a district without a layer: the city's 60
        ("NO-SUCH-CODE", "310104", 0.01, None),  # no limit stays no limit
    ],
)
def test_due_at_under_a_drill(category: str, district: str, scale: float, due: int | None) -> None:
    cat = load_catalogue(default_catalogue_dir())
    assert due_at(cat, category, district, T0, scale) == due


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
    for topic in ("city/platform/alert/#", "city/platform/lifecycle/#",
                  "city/platform/escalation/#"):  # fmt: skip
        assert topic in line
    assert "DRILL" not in line
    assert "DRILL: alert time limits x0.01" in banner("u", "b", "city", 0.01)


async def test_a_drill_escalates_in_seconds(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    gw = prefix
    argv = ["--mqtt-host", mosquitto.host, "--mqtt-port", str(mosquitto.port), "--prefix", prefix,
            "--data-dir", str(tmp_path), "--bridge-id", f"central-{prefix}",
            "--escalation-scale", "0.005"]  # fmt: skip
    async with (
        aiomqtt.Client(mosquitto.host, mosquitto.port, identifier=f"platform-{prefix}") as sub,
        central(*argv),
        publisher(mosquitto.host, mosquitto.port) as pub,
    ):
        await sub.subscribe(f"{prefix}/platform/#", qos=1)
        t = now_ms()
        event = smoke("a1", gateway=gw, at=t)  # 2201 smoke alarm: 15 min, 4.5 s in this drill
        await pub.publish(Topics(prefix).alert(gw), event.model_dump_json(), qos=1)
        got: dict[str, dict[str, Any]] = {}
        async with asyncio.timeout(30):  # the escalation clock looks every 5 s
            async for m in sub.messages:
                got.setdefault(str(m.topic).split("/")[2], json.loads(m.payload))
                if "escalation" in got:
                    break
    opened = got["lifecycle"]
    assert opened["due_at"] == t + 4_500 and opened["time_limit_min"] == 15
    escalated = got["escalation"]
    assert escalated["alert_id"] == f"{gw}:a1" and escalated["time_limit_min"] == 15
    assert escalated["overdue_ms"] > 0
