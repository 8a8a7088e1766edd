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

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from cloud_bridge.core import PlatformOut
from device_registry.ingest.changes import DeviceFacts
from gridwatch.ground.contract import Location

_K = TypeVar("_K")
_V = TypeVar("_V")

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
    alert, and to label the telemetry written ahead of the registry, while the registry cannot be
    asked: the same labels as before the outage, so a district's series has no hole in it."""

    owners: dict[str, frozenset[str]] = field(default_factory=dict)
    """Device name -> the gateways it is registered under; an empty set: asked, not registered."""
    locations: dict[tuple[str, str], Location] = field(default_factory=dict)
    units: dict[tuple[str, str], Mapping[str, str]] = field(default_factory=dict)
    reported: dict[tuple[str, str], Location] = field(default_factory=dict)

    def remember(self, named: Iterable[tuple[str, str]], facts: DeviceFacts) -> None:
        """``facts``: the registry's answer about ``named`` ((gateway, device) pairs)."""
        pairs = set(named)
        if len(self.owners) + len(pairs) > FACTS_MAX:
            self.owners.clear()
            for kept in (self.locations, self.units, self.reported):
                kept.clear()
        for gw, dev in pairs:
            self.owners[dev] = facts.owners.get(dev, frozenset())
            _keep(self.locations, facts.locations, (gw, dev))
            _keep(self.units, facts.units, (gw, dev))
            _keep(self.reported, facts.reported, (gw, dev))

    def recall(self, named: Iterable[tuple[str, str]]) -> tuple[DeviceFacts, set[tuple[str, str]]]:
        """What was last read about ``named``, and the pairs never asked about (unknown)."""
        out, unknown = DeviceFacts(), set[tuple[str, str]]()
        for gw, dev in named:
            known = self.owners.get(dev)
            if known is None:
                unknown.add((gw, dev))
                continue
            if known:
                out.owners[dev] = known
            _keep(out.locations, self.locations, (gw, dev))
            _keep(out.units, self.units, (gw, dev))
            _keep(out.reported, self.reported, (gw, dev))
        return out, unknown


def _keep(into: dict[_K, _V], source: Mapping[_K, _V], key: _K) -> None:
    """``into[key]`` as ``source`` has it: set, or gone where ``source`` has none."""
    value = source.get(key)
    if value is None:
        into.pop(key, None)
    else:
        into[key] = value


__all__ = ["FACTS_MAX", "FactsCache", "fresh"]
