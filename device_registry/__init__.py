"""device_registry: districts, sites, gateways, devices, alerts and health; the REST API.

It never imports cloud_bridge, edge or drivers: data flows into it, not out of it.
"""

from device_registry.changes import Changes, QuarantineEntry, Seen
from device_registry.errors import Ambiguous, NotFound, RegistryError, StoreUnavailable
from device_registry.models import device_key
from device_registry.store import RegistryStore

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
