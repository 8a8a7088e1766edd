"""What the bridge relays while the registry cannot answer: pure, no I/O.

An alert must reach the city platform whether or not the registry database answers. When a
step's registry lookups (seen ids, device facts) keep it waiting, the shell (``bridge.py``) plans
the waiting messages again with a stand-in core that counts nothing, with no seen ids and with
the device facts it last read (``FactsCache``), and publishes their platform alerts at once. The
registry records them when it answers again, through the normal step; that step publishes only
what was not published before (``fresh``), by transition key (``core.transition_key``), which the
shell keeps durably (``ledger.py``) so that a restart does not publish a transition again either.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from cloud_bridge.core import PlatformOut
from device_registry.ingest.changes import DeviceFacts
from gridwatch.ground.contract import Location

FACTS_MAX = 200_000
"""Devices remembered: a city's registered fleet; names a hostile gateway makes up must not grow
memory without end (over the bound the cache starts again, and fills from the next lookups)."""


def fresh(outgoing: Sequence[PlatformOut], published: Collection[str]) -> list[PlatformOut]:
    """``outgoing`` without the transitions in ``published`` and without repeats, in order."""
    out: list[PlatformOut] = []
    taken: set[str] = set()
    for o in outgoing:
        if o.transition in published or o.transition in taken:
            continue
        taken.add(o.transition)
        out.append(o)
    return out


@dataclass
class FactsCache:
    """The registry's last word on each device it was asked about (``DeviceFacts``), to place an
    alert while the registry cannot be asked."""

    owners: dict[str, frozenset[str]] = field(default_factory=dict)
    """Device name -> the gateways it is registered under; an empty set: asked, not registered."""
    locations: dict[tuple[str, str], Location] = field(default_factory=dict)

    def remember(self, named: Iterable[tuple[str, str]], facts: DeviceFacts) -> None:
        """``facts``: the registry's answer about ``named`` ((gateway, device) pairs)."""
        pairs = set(named)
        if len(self.owners) + len(pairs) > FACTS_MAX:
            self.owners.clear()
            self.locations.clear()
        for gw, dev in pairs:
            self.owners[dev] = facts.owners.get(dev, frozenset())
            place = facts.locations.get((gw, dev))
            if place is None:
                self.locations.pop((gw, dev), None)
            else:
                self.locations[(gw, dev)] = place

    def recall(self, named: Iterable[tuple[str, str]]) -> tuple[DeviceFacts, set[tuple[str, str]]]:
        """What was last read about ``named``, and the pairs never asked about (unknown)."""
        owners: dict[str, frozenset[str]] = {}
        places: dict[tuple[str, str], Location] = {}
        unknown: set[tuple[str, str]] = set()
        for gw, dev in named:
            known = self.owners.get(dev)
            if known is None:
                unknown.add((gw, dev))
                continue
            if known:
                owners[dev] = known
            place = self.locations.get((gw, dev))
            if place is not None:
                places[(gw, dev)] = place
        return DeviceFacts(owners, places), unknown


__all__ = ["FACTS_MAX", "FactsCache", "fresh"]
