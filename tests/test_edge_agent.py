"""The edge agent against a real broker and simulated Modbus devices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gridwatch.ground.contract import AlertEvent, Birth, TelemetryBatch
from gridwatch.top.sim.modbus import SimField
from tests.fieldkit import Listener, gateway_config, listen, running
from tests.services import Mosquitto


def alerts(seen: Listener) -> list[AlertEvent]:
    """Alert events as the centre keeps them: delivery is at-least-once, deduped by message id."""
    unique = {p["id"]: p for p in seen.on("alert")}
    return [AlertEvent.model_validate(p) for p in unique.values()]


async def test_threshold_alert_raises_once_and_clears_once(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    cfg, devices, _ = gateway_config(tmp_path, mosquitto.port, prefix)
    async with (
        SimField(devices, update_s=3600) as field,
        listen(mosquitto.port, f"{prefix}/#") as seen,
    ):
        await field.set_value("wl-001", "level", 1.0)
        async with running(cfg, devices):
            await seen.wait_for(lambda s: s.on("status") and s.on("telemetry"))
            birth = Birth.model_validate(seen.on("status")[0])
            assert "wl-001" in birth.devices
            await field.set_value("wl-001", "level", 3.0)
            await seen.wait_for(lambda s: len(s.on("alert")) >= 1)
            await field.set_value("wl-001", "level", 2.4)  # inside the hysteresis band: stays
            await field.set_value("wl-001", "level", 1.0)
            await seen.wait_for(lambda s: any(a["state"] == "cleared" for a in s.on("alert")))
    got = alerts(seen)
    assert [(a.state, a.device) for a in got] == [("raised", "wl-001"), ("cleared", "wl-001")]
    assert got[0].alert_id == got[1].alert_id
    assert got[0].value == 3.0 and got[0].threshold == 2.5 and got[0].category == "040401"
    assert (got[0].location.district, got[0].location.grid) == ("futian", "FT-0042")
    assert [a.seq for a in got] == [1, 2]
    batches = [TelemetryBatch.model_validate(p) for p in seen.on("telemetry")]
    levels = [
        r.value for b in batches for r in b.readings if r.device == "wl-001" and r.point == "level"
    ]
    assert 3.0 in levels and levels[-1] == 1.0
    seqs = [b.seq for b in batches]
    assert seqs == list(range(1, len(seqs) + 1))  # no gaps, no repeats


async def test_restart_neither_reraises_nor_forgets_an_active_alert(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    cfg, devices, _ = gateway_config(tmp_path, mosquitto.port, prefix)
    async with (
        SimField(devices, update_s=3600) as field,
        listen(mosquitto.port, f"{prefix}/#") as seen,
    ):
        await field.set_value("wl-001", "level", 3.0)
        async with running(cfg, devices):
            await seen.wait_for(lambda s: len(s.on("alert")) == 1)
        async with running(cfg, devices):  # same outbox file: a restart
            await seen.wait_for(
                lambda s: sum(1 for p in s.on("status") if p["kind"] == "birth") >= 2
            )
            await seen.wait_for(lambda s: len(s.on("telemetry")) >= 4)
            assert len(alerts(seen)) == 1  # not raised again
            await field.set_value("wl-001", "level", 1.0)
            await seen.wait_for(lambda s: len(alerts(s)) == 2)
    raised, cleared = alerts(seen)
    assert cleared.state == "cleared" and cleared.alert_id == raised.alert_id


async def test_device_failure_is_reported_as_quality_never_as_a_number(
    mosquitto: Mosquitto, prefix: str, tmp_path: Path
) -> None:
    cfg, devices, _ = gateway_config(tmp_path, mosquitto.port, prefix)
    async with (
        SimField(devices, update_s=3600) as field,
        listen(mosquitto.port, f"{prefix}/#") as seen,
    ):
        field.kill("sd-002")
        await field.set_raw("wl-002", "level", 65535)  # the converter's "loop open"
        async with running(cfg, devices):

            def bad(s: Listener) -> dict[str, Any]:
                out = {}
                for b in s.on("telemetry"):
                    for r in b["readings"]:
                        if r["quality"] != "good":
                            out[(r["device"], r["point"])] = r
                return out

            await seen.wait_for(
                lambda s: ("sd-002", "obscuration") in bad(s) and ("wl-002", "level") in bad(s)
            )
            found = bad(seen)
    assert found[("sd-002", "obscuration")]["quality"] == "comm_error"
    assert found[("sd-002", "obscuration")]["value"] is None
    assert found[("wl-002", "level")]["quality"] == "invalid"
    assert found[("wl-002", "level")]["value"] is None
