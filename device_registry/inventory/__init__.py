"""Districts, sites, gateways and devices as installers register them: CSV import, broker
provisioning, generated gateway configs, commands, and the registry's downlink session."""
