"""The data gridwatch ships: device profiles, gateway configs, the event catalogue, the
district's places (streets, grid cells, area classes), the centre's example config, JSON
Schemas, and sample files for installers (a device CSV).

This folder is a package, holding nothing but data and the names of its folders, so that a wheel
carries it and an installed gridwatch finds it with ``importlib.resources`` (see
``gridwatch.ground.shipped``), while in the repository it stays the plain folder that people read,
edit and point ``gridwatch config check`` at. Walking up from a source file to find it works only in
a checkout; a package works wherever pip puts it.
"""

PROFILES = "profiles"
GATEWAYS = "gateways"
CATALOGUE = "catalogue"
SCHEMA = "schema"
SAMPLES = "samples"
CENTRAL = "central"
PLACES = "places"

FOLDERS = (PROFILES, GATEWAYS, CATALOGUE, SCHEMA, SAMPLES, CENTRAL, PLACES)

SYSTEMD = "systemd"
"""systemd units for the edge, the bridge and the registry (not YAML: not config-checked)."""

__all__ = [
    "CATALOGUE",
    "CENTRAL",
    "FOLDERS",
    "GATEWAYS",
    "PLACES",
    "PROFILES",
    "SAMPLES",
    "SCHEMA",
    "SYSTEMD",
]
