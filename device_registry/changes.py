"""What an ingest step changes in the registry, as plain data.

The bridge's pure core builds a ``Changes`` from a batch of MQTT messages; ``RegistryStore.apply``
writes it in one transaction. Keys are already coalesced (one reading per device point, one entry per
device), so an upsert never touches a row twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gridwatch.contract import AlertEvent, Birth, Death, GatewayHealth, Reading


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    topic: str
    reason: str
    detail: str
    payload: bytes
    received_at: int


@dataclass
class Changes:
    now: int
    """Receive time (epoch ms, central clock) of the batch."""
    seen_ids: dict[str, str] = field(default_factory=dict)
    """Message id -> gateway, for the dedupe table."""
    device_seen: dict[tuple[str, str], int | None] = field(default_factory=dict)
    """(gateway, device) -> newest reading time that proves it alive (None: only mentioned)."""
    latest: dict[tuple[str, str, str], Reading] = field(default_factory=dict)
    """(gateway, device, point) -> its newest reading in the batch."""
    alerts: list[AlertEvent] = field(default_factory=list)
    health: list[GatewayHealth] = field(default_factory=list)
    status: list[Birth | Death] = field(default_factory=list)
    """Births and deaths in arrival order."""
    quarantine: list[QuarantineEntry] = field(default_factory=list)

    def gateways(self) -> set[str]:
        """Every gateway this batch shows alive or mentions."""
        gws = {gw for gw, _ in self.device_seen}
        gws.update(a.gateway for a in self.alerts)
        gws.update(h.gateway for h in self.health)
        gws.update(s.gateway for s in self.status)
        return gws
