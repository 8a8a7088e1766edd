"""The ground floor every role stands on: the wire contract, config models and loaders, the
catalogue, metrics and small shared utilities. It imports nothing from drivers, edge, cloud_bridge
or device_registry."""
