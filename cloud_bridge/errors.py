"""Errors of the cloud bridge.

    BridgeError                   base of everything raised here
    ├── BrokerError               the MQTT connection failed or was lost (from aiomqtt's MqttError)
    ├── SinkError                 the time-series store refused or could not be reached
    │                             (influx-client, aiohttp, sqlite errors); ``sink`` names it
    └── LocalStoreError           a file of the bridge's own (its publish ledger, ``ledger.py``;
                                  its spool, ``spool.py``) could not be read or written (sqlite
                                  errors); ``path`` names it

A malformed message is not an error: the pure core turns it into a ``Rejection`` that is
counted, logged and quarantined. Registry failures arrive as device_registry's
``StoreUnavailable``; both they and ``SinkError`` are retried without acknowledging, so the broker
keeps the messages until they are written.
"""

from __future__ import annotations

from pathlib import Path


class BridgeError(Exception):
    """Base of the bridge's errors."""


class BrokerError(BridgeError):
    """The MQTT session failed; the bridge reconnects and the broker redelivers unacked messages."""


class SinkError(BridgeError):
    def __init__(self, sink: str, message: str) -> None:
        super().__init__(f"{sink} sink: {message}")
        self.sink = sink


class LocalStoreError(BridgeError):
    """A file of the bridge's own failed: never a reason to hold an alert back."""

    def __init__(self, path: Path, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
