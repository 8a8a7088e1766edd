"""A long uplink outage with a small outbox: the overflow policy applies, every alert arrives."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gridwatch.ground.contract import AlertEvent, TelemetryBatch
from gridwatch.top.sim.modbus import SimField
from tests.fieldkit import gateway_config, listen, running
from tests.services import Mosquitto


@pytest.fixture
def gated_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that lets the test's watcher in but not the gateway, until the test says so."""
    broker = Mosquitto(tmp_path / "mq", users={"watcher": "w"}).start()
    yield broker
    broker.stop()


async def test_full_outbox_drops_oldest_telemetry_and_never_an_alert(
    gated_broker: Mosquitto,
    prefix: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    broker = gated_broker
    monkeypatch.setenv("GW_PW", "gw")
    cfg, devices, _ = gateway_config(
        tmp_path, broker.port, prefix, password_env="GW_PW", batch_max=20
    )
    cfg = cfg.model_copy(update={"outbox": cfg.outbox.model_copy(update={"max_bytes": 8_000})})
    async with SimField(devices, update_s=0.5) as field, running(cfg, devices) as agent:
        box = agent.outbox
        # offline: the uplink is refused; raise and clear an alert while the outbox overflows
        await field.set_value("wl-002", "level", 1.0)  # no rain on wl-002 in this test
        await field.set_value("wl-001", "level", 3.0)
        await agent.uplink.wait_until(lambda u: u.reconnects > 0, within_s=10)
        async with listen(broker.port, f"{prefix}/#", username="watcher", password="w") as seen:
            pipe = agent.pipeline
            await pipe.watch.until(lambda: pipe.alerts_out >= 1 and box.dropped > 0, within_s=30)
            await field.set_value("wl-001", "level", 1.0)
            await pipe.watch.until(lambda: pipe.alerts_out >= 2, within_s=10)
            produced_batches = box.meta("seq:telemetry")
            dropped = box.dropped
            # the uplink returns: let the gateway in
            await asyncio.to_thread(broker.add_user, cfg.gateway.id, "gw")
            broker.reload()
            await seen.wait_for(lambda s: len(s.on("alert")) >= 2, within_s=20)
            await seen.wait_for(
                lambda s: any(p["seq"] >= produced_batches for p in s.on("telemetry")), within_s=20
            )
    alerts = [AlertEvent.model_validate(p) for p in seen.on("alert")]
    assert [a.state for a in alerts] == ["raised", "cleared"]
    seqs = sorted({TelemetryBatch.model_validate(p).seq for p in seen.on("telemetry")})
    # what arrived is the newest telemetry without a hole; only the oldest were dropped, and
    # every missing batch is counted in the outbox's dropped figure (which also counts health)
    assert seqs == list(range(seqs[0], seqs[-1] + 1))
    assert 1 < seqs[0] <= box.dropped + 1
    assert dropped > 0
    # counted poll by poll: each water-level sensor's read counter arrived as one run ending at
    # the newest poll, so the only polls lost are the oldest, which the overflow policy dropped
    for device in ("wl-001", "wl-002"):
        counts = sorted(
            r.value
            for p in seen.on("telemetry")
            for r in TelemetryBatch.model_validate(p).readings
            if r.device == device and r.point == "counter" and isinstance(r.value, int)
        )
        assert counts == list(range(counts[0], counts[-1] + 1)), device
        assert counts[0] > 1, device  # the oldest polls were the ones dropped
