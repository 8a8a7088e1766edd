"""The bridge's settings, from the merged options of ``central run`` / ``bridge run`` (a
``central.yaml`` and flags over it: ``gridwatch.ground.centralconf``)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gridwatch.ground.endpoints import Endpoint, parse_endpoints

MqttProtocol = Literal["auto", "5", "3.1.1"]


@dataclass(frozen=True)
class BridgeConfig:
    mqtt_host: str = "127.0.0.1"
    """The broker's host, or the nodes of a broker cluster as ``host[:port],host[:port]``: each
    session uses one and moves to the next when it is gone."""
    mqtt_port: int = 1883
    """The port of a broker given without one."""
    mqtt_username: str | None = None
    mqtt_password: str | None = None
    mqtt_protocol: MqttProtocol = "auto"
    client_id: str = "gridwatch-bridge"
    share_group: str | None = None
    prefix: str = "gridwatch"
    data_dir: Path = Path("var/central")
    influx_url: str | None = None
    influx_bucket: str = "gridwatch"
    influx_org: str = "gridwatch"
    influx_token: str = "unused"
    history_hours: float = 48.0
    max_batch: int = 200
    """Messages handled together in one step (one time-series write)."""
    registry_window_s: float = 1.0
    """Telemetry steps merged into one registry transaction (last values written once)."""
    max_unacked: int = 1000
    """MQTT 5 Receive Maximum: messages the broker may have out to us unacknowledged."""
    seen_retention_s: int = 7 * 24 * 3600
    """How long a message id is remembered for dedupe: longer than any redelivery."""
    quarantine_keep: int = 1000
    gap_audit_s: float = 5.0
    """Under a shared subscription: how often a member audits the streams for gaps."""
    gap_settle_s: float = 10.0
    """...and how old a number must be to be audited (every member has committed it by then)."""
    shared_events_expiry_s: int = 30
    """Under a shared subscription: how long the broker keeps the events lane's session (alerts,
    health) of a member that is gone, queueing that member's turn of the stream for it. Past it
    the session and what it queued are gone, the other members take the whole stream, and the
    gateways send again what no bridge acknowledged (docs/central.md, "A member that stops")."""
    claims_expiry_s: int = 24 * 3600
    """Under a shared subscription: how long the broker keeps a member's claim that it published
    an alert transition (``claims.py``), so no other member publishes it again: longer than a
    registry outage the group rides out without a double (docs/central.md)."""
    maintenance_s: float = 60.0
    heartbeat_s: float = 2.0
    """How often the bridge writes its health report to the registry database (for registries
    in other processes, ``device_registry.health.centre``)."""
    clock_back_s: float = 7 * 24 * 3600.0
    """Times older than this before the centre's clock are refused (``core.ClockWindow``)."""
    clock_ahead_s: float = 300.0
    """Times later than this after the centre's clock are refused."""
    max_devices_per_gateway: int = 1000
    """Devices a gateway may add to the registry by naming them; an installer registers more."""

    @property
    def brokers(self) -> tuple[Endpoint, ...]:
        return parse_endpoints(self.mqtt_host, self.mqtt_port)

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: object) -> BridgeConfig:
        # the secrets were read where the options were merged (gridwatch.ground.centralconf)
        token = args.influx_token
        values: dict[str, object] = dict(
            mqtt_host=args.mqtt_host or "127.0.0.1", mqtt_port=args.mqtt_port,
            mqtt_username=args.mqtt_username, mqtt_password=args.mqtt_password,
            mqtt_protocol=args.mqtt_protocol, client_id=args.bridge_id,
            share_group=args.share_group, prefix=args.prefix, data_dir=Path(args.data_dir),
            influx_url=args.influx_url, influx_bucket=args.influx_bucket,
            influx_org=args.influx_org, influx_token=token or "unused",
            history_hours=args.history_hours,
        )  # fmt: skip
        values.update(overrides)
        return cls(**values)  # type: ignore[arg-type]
