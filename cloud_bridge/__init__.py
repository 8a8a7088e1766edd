"""cloud_bridge: the central ingest service, MQTT -> time-series store + device registry.

Pure core (``core``, ``decode``, ``sequence``, ``labels``, ``lineproto``, ``relay``) and thin
I/O shells (``bridge``, ``mqtt``, ``inbox``, ``ledger``, ``claims``, ``watched``, ``sink_*``). It may import
device_registry's store and gridwatch.ground.contract, nothing else of ours.
"""

from cloud_bridge.bridge import Bridge
from cloud_bridge.config import BridgeConfig
from cloud_bridge.core import IngestCore, Stats
from cloud_bridge.errors import BridgeError, BrokerError, SinkError
from cloud_bridge.sink import TelemetrySink
from cloud_bridge.sink_influx import InfluxSink
from cloud_bridge.sink_sqlite import SqliteSink

__all__ = [
    "Bridge",
    "BridgeConfig",
    "BridgeError",
    "BrokerError",
    "InfluxSink",
    "IngestCore",
    "SinkError",
    "SqliteSink",
    "Stats",
    "TelemetrySink",
]
