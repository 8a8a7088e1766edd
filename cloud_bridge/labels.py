"""The labels of a reading's time series beyond gateway, device, point and quality: pure, no I/O.

Where its device stands (``district``, ``street``, ``grid``) and the ``unit`` of its point, from
the registry's record of the device: ``DeviceFacts``, which the bridge asks the registry for once
per ingest step, for the devices the step names; never once per reading.

- A registered device carries its registered place: the installer's word, the place its alerts
  are put at. A device nobody registered carries the place its gateway's Birth gave it
  (``device_info``; the registry sites it there: ``DeviceFacts.reported``), so that a district's
  queries find it before an installer gets to it; without one, those labels are left out and its
  readings land all the same. Registering it later at another place starts new series there.
- ``unit`` is the unit of the point in the profile the device is registered with; where the
  registry knows no profile for the device, or no such point in it, the unit its gateway sent.
- An empty label is left out of the line: to VictoriaMetrics, as to Prometheus, a missing label
  and an empty one are the same, so ``{street=""}`` selects the devices without a street.

Cardinality: each label is a function of the device (its place) or of its point (the unit), so
together they add no series to those that gateway, device, point and quality make already. A
series is named by all its labels, though: a device an installer moves, or registers again with
a profile of another unit, starts a new series with its next reading; the old one keeps its
history and is still found by gateway, device and point (docs/analytics.md).

The seam for the class code and component id (issue 13's catalogue), once the registry keeps them
for a device: a field of ``DeviceFacts`` filled where its place is, a name in ``DEVICE_LABELS``
and its value in ``device_labels``. The line protocol (``lineproto``) and the SQLite sink's
columns follow ``LABELS``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from device_registry.ingest.changes import DeviceFacts
from gridwatch.ground.contract import Reading

DEVICE_LABELS: tuple[str, ...] = ("district", "street", "grid")
"""The labels a device gives all its series (``DeviceLabels.place``)."""
LABELS: tuple[str, ...] = (*DEVICE_LABELS, "unit")
"""Every name, in the order ``series_labels`` gives the values."""

Labels = tuple[str, ...]
"""The values of ``LABELS``, "" where there is none."""

NO_FACTS = DeviceFacts()
_NOWHERE = ("", "", "")


@dataclass(frozen=True, slots=True)
class DeviceLabels:
    """What the registry gives every series of one device: found once per device in a batch,
    not once per reading (the line protocol's hot loop)."""

    place: Labels
    """The values of ``DEVICE_LABELS``."""
    units: Mapping[str, str] | None
    """Point -> unit from its registered profile; None: no profile the registry knows."""

    def unit(self, point: str, sent: str) -> str:
        """The unit label of ``point``, whose reading came with the unit ``sent``."""
        return sent if self.units is None else self.units.get(point, sent)


def device_labels(facts: DeviceFacts, gateway: str, device: str) -> DeviceLabels:
    key = (gateway, device)
    place = facts.locations.get(key) or facts.reported.get(key)
    where = _NOWHERE if place is None else (place.district, place.street, place.grid)
    return DeviceLabels(where, facts.units.get(key))


def series_labels(facts: DeviceFacts, gateway: str, reading: Reading) -> Labels:
    """The labels of the series ``reading`` (sent by ``gateway``) belongs to."""
    dev = device_labels(facts, gateway, reading.device)
    return (*dev.place, dev.unit(reading.point, reading.unit))
