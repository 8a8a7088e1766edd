"""What an ingest step changes in the registry, as plain data.

The bridge's pure core builds a ``Changes`` from a batch of MQTT messages; ``RegistryStore.apply``
writes it in one transaction. Keys are already coalesced (one reading per device point, one entry per
device), so an upsert never touches a row twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from gridwatch.ground.contract import AlertEvent, Birth, Death, GatewayHealth, Location, Reading


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    topic: str
    reason: str
    detail: str
    payload: bytes
    received_at: int


@dataclass(frozen=True, slots=True)
class Seen:
    """Where an ingested message sits in its gateway's numbering (for the gap audit)."""

    gateway: str
    stream: str = ""  # "" for messages outside the numbered streams
    session: int = 0
    seq: int = 0


@dataclass
class Changes:
    now: int
    """Receive time (epoch ms, central clock) of the batch."""
    seen_ids: dict[str, Seen] = field(default_factory=dict)
    """Message id -> its gateway and place in the stream, for the dedupe table."""
    device_seen: dict[tuple[str, str], int | None] = field(default_factory=dict)
    """(gateway, device) -> newest reading time that proves it alive (None: only mentioned)."""
    latest: dict[tuple[str, str, str], Reading] = field(default_factory=dict)
    """(gateway, device, point) -> its newest reading in the batch."""
    alerts: list[AlertEvent] = field(default_factory=list)
    health: list[GatewayHealth] = field(default_factory=list)
    status: list[Birth | Death] = field(default_factory=list)
    """Births and deaths in arrival order."""
    quarantine: list[QuarantineEntry] = field(default_factory=list)

    def merge(self, other: Changes) -> None:
        """Fold a later step into this one, keeping keys coalesced (newest reading wins)."""
        self.now = max(self.now, other.now)
        self.seen_ids.update(other.seen_ids)
        for dev, seen in other.device_seen.items():
            old = self.device_seen.get(dev)
            if old is None or (seen is not None and seen > old):
                self.device_seen[dev] = seen
        for key, reading in other.latest.items():
            kept = self.latest.get(key)
            if kept is None or reading.ts >= kept.ts:
                self.latest[key] = reading
        self.alerts += other.alerts
        self.health += other.health
        self.status += other.status
        self.quarantine += other.quarantine

    def gateways(self) -> set[str]:
        """Every gateway this batch shows alive or mentions."""
        gws = {gw for gw, _ in self.device_seen}
        gws.update(a.gateway for a in self.alerts)
        gws.update(h.gateway for h in self.health)
        gws.update(s.gateway for s in self.status)
        return gws


@dataclass(frozen=True)
class DeviceFacts:
    """What the registry knows of the devices a batch names, for the bridge's core to decide by
    (a gateway speaks only for its own registered devices, at their registered places) and for
    the labels of their time series (``cloud_bridge.labels``): one query per ingest step, none
    per reading."""

    owners: dict[str, frozenset[str]] = field(default_factory=dict)
    """Device name -> the gateways an installer registered it under (active devices only)."""
    locations: dict[tuple[str, str], Location] = field(default_factory=dict)
    """(gateway, device) -> where the installer registered it (devices with a site only)."""
    units: dict[tuple[str, str], Mapping[str, str]] = field(default_factory=dict)
    """(gateway, device) -> point -> unit, from the profile the installer registered it with
    (devices whose profile the registry knows only): the time-series store's ``unit`` label."""
    reported: dict[tuple[str, str], Location] = field(default_factory=dict)
    """(gateway, device) -> where its gateway's Birth (``device_info``) put a device nobody
    registered: for its time series' place labels only, never to place an alert or to decide
    whose device it is."""

    def foreign(self, gateway: str, device: str) -> bool:
        """Registered under other gateways, not this one: another gateway's device."""
        owners = self.owners.get(device)
        return owners is not None and gateway not in owners
