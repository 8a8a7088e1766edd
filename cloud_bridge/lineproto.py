"""Readings -> InfluxDB line protocol, built as strings (5x faster than influxdb-client's Point).

One series per (gateway, device, point, quality): measurement ``gridwatch`` (configurable), tags
gateway/device/point/quality and the labels of ``labels.LABELS`` (district, street, grid, unit;
an empty one left out; the order of tags means nothing to the store), one float field ``value`` (VictoriaMetrics names it ``gridwatch_value``),
timestamps in milliseconds. Only numbers and booleans are written: strings would be stored as 0
by VictoriaMetrics, and a reading without a value (a failed read) has nothing to write; both stay
in the registry's last values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from cloud_bridge.labels import DEVICE_LABELS, NO_FACTS, Labels, device_labels
from device_registry.ingest.changes import DeviceFacts
from gridwatch.ground.contract import TelemetryBatch

# A street is free text an installer typed (tabs and line ends included): line protocol has no
# escape for a control character, so each becomes an (escaped) space in a tag's value
_CONTROLS = {chr(c): "\\ " for c in (*range(0x20), 0x7F)}
_TAG_ESCAPES = str.maketrans({**_CONTROLS, "\\": "\\\\", ",": "\\,", "=": "\\=", " ": "\\ "})
_MEASUREMENT_ESCAPES = str.maketrans({"\\": "\\\\", ",": "\\,", " ": "\\ ", "\n": "\\n"})


def _tag(value: str) -> str:
    # an empty tag value is not allowed in line protocol
    return value.translate(_TAG_ESCAPES) if value else "_"


# Two caches, since a field has a bounded set of series: a device's part of the line (with its
# place), and the whole line up to the value. A reading then costs one tuple and two lookups.
_DEVICES: dict[tuple[str, str, str, Labels], str] = {}
_KEYS: dict[tuple[str, str, str, str], str] = {}
_KEYS_MAX = 1 << 18


def device_key(measurement: str, gateway: str, device: str, place: Labels) -> str:
    """The line's measurement and the tags every series of the device has."""
    k = (measurement, gateway, device, place)
    key = _DEVICES.get(k)
    if key is None:
        if len(_DEVICES) >= _KEYS_MAX:
            _DEVICES.clear()
        where = "".join(f",{name}={_tag(value)}"
                        for name, value in zip(DEVICE_LABELS, place, strict=True) if value)  # fmt: skip
        key = _DEVICES[k] = (
            f"{measurement.translate(_MEASUREMENT_ESCAPES)},gateway={_tag(gateway)},"
            f"device={_tag(device)}{where}"
        )
    return key


def series_key(device: str, point: str, quality: str, unit: str) -> str:
    """The line up to the field value, from the device's part (``device_key``)."""
    k = (device, point, quality, unit)
    key = _KEYS.get(k)
    if key is None:
        if len(_KEYS) >= _KEYS_MAX:
            _KEYS.clear()
        labelled = f",unit={_tag(unit)}" if unit else ""
        key = _KEYS[k] = (
            f"{device},point={_tag(point)},quality={_tag(str(quality))}{labelled} value="
        )
    return key


def batch_lines(
    batch: TelemetryBatch, measurement: str, out: list[str], facts: DeviceFacts = NO_FACTS
) -> int:
    """Append one line per writable reading to ``out``, labelled from ``facts`` (the registry's
    word on the batch's devices); return how many readings were skipped."""
    skipped = 0
    gw = batch.gateway
    append = out.append
    name = prefix = ""
    units: Mapping[str, str] | None = None
    for r in batch.readings:
        v = r.value
        t = type(v)
        if t is float:
            if not math.isfinite(v):  # type: ignore[arg-type]
                skipped += 1
                continue
        elif t is int:
            v = float(v)  # type: ignore[arg-type]
        elif t is bool:
            v = 1.0 if v else 0.0
        else:
            skipped += 1
            continue
        if r.device != name or not prefix:  # a batch lists a device's readings together
            name = r.device
            labels = device_labels(facts, gw, name)
            prefix = device_key(measurement, gw, name, labels.place)
            units = labels.units
        # ``DeviceLabels.unit``, written out: a method call per reading costs a tenth of the loop
        unit = r.unit if units is None else units.get(r.point, r.unit)
        append(f"{series_key(prefix, r.point, r.quality, unit)}{v!r} {r.ts}")
    return skipped
