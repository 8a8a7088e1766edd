"""device_registry: districts, sites, gateways, devices, alerts and health; the REST API.

It never imports cloud_bridge, edge or drivers: data flows into it, not out of it.
"""

from device_registry.db.store import RegistryStore
from device_registry.db.tables import device_key
from device_registry.errors import Ambiguous, NotFound, RegistryError, StoreUnavailable
from device_registry.ingest.changes import Changes, QuarantineEntry, Seen

__all__ = [
    "Ambiguous",
    "Changes",
    "NotFound",
    "QuarantineEntry",
    "RegistryError",
    "RegistryStore",
    "Seen",
    "StoreUnavailable",
    "device_key",
]
