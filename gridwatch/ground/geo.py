"""Coordinates from Chinese web maps: GCJ-02 to WGS-84 and back. Pure, no I/O.

gridwatch stores and serves positions in WGS-84 (what GPS receivers, OpenStreetMap and most GIS
servers use). Positions read off the Chinese web maps (Amap/Gaode, Tencent, and Baidu's map
after its own further shift, BD-09, which this module does not handle) are in GCJ-02, the
national obfuscated datum: about 300-500 m off WGS-84 in Shanghai, enough to send a crew to the
wrong manhole. An installer who copies a position from such a map converts it with
``gcj02_to_wgs84``; the dashboard's map draws WGS-84 only.

The forward transform (WGS-84 -> GCJ-02) is the published algorithm: an offset from a fixed
polynomial-and-sine series in (lon - 105, lat - 35), scaled to degrees on the Krasovsky
ellipsoid (a = 6378245 m). It has no closed inverse, so ``gcj02_to_wgs84`` solves
``wgs84_to_gcj02(w) = g`` by fixed-point iteration: w <- w - (wgs84_to_gcj02(w) - g). The offset
changes slowly (its derivative is below 1e-3), so each step gains about three digits; the loop
stops when a step moves less than ``TOLERANCE_DEG`` (1e-10 degree, about 0.01 mm) and the
round trip ``wgs84_to_gcj02(gcj02_to_wgs84(g))`` is within 1e-9 degree of ``g``
(tests/test_geo.py checks it over the district and over China).

Outside mainland China's rough bounding box GCJ-02 equals WGS-84, as the published algorithm
says; positions there pass unchanged. The box also covers neighbouring countries (a known
simplification of the algorithm); the district is far inside it.
"""

from __future__ import annotations

import math

# the Krasovsky 1940 ellipsoid the algorithm scales its offset on (not WGS-84's)
A = 6378245.0
EE = 0.00669342162296594323  # its first eccentricity squared
TOLERANCE_DEG = 1e-10
MAX_STEPS = 30  # a step gains ~3 digits: 5 are enough, 30 bound a loop that would never end


def in_china(lat: float, lon: float) -> bool:
    """Whether the algorithm shifts this position (its rough box around mainland China)."""
    return 72.004 <= lon <= 137.8347 and 0.8293 <= lat <= 55.8271


def _series(x: float, y: float) -> tuple[float, float]:
    """The published offset series, in metres-like units before scaling: (dlat, dlon) for
    x = lon - 105, y = lat - 35."""
    waves = 20.0 * math.sin(6.0 * x * math.pi) + 20.0 * math.sin(2.0 * x * math.pi)
    dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    dlat += (waves + 20.0 * math.sin(y * math.pi) + 40.0 * math.sin(y / 3.0 * math.pi)) * 2 / 3
    dlat += (160.0 * math.sin(y / 12.0 * math.pi) + 320.0 * math.sin(y * math.pi / 30.0)) * 2 / 3
    dlon = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    dlon += (waves + 20.0 * math.sin(x * math.pi) + 40.0 * math.sin(x / 3.0 * math.pi)) * 2 / 3
    dlon += (150.0 * math.sin(x / 12.0 * math.pi) + 300.0 * math.sin(x / 30.0 * math.pi)) * 2 / 3
    return dlat, dlon


def _offset(lat: float, lon: float) -> tuple[float, float]:
    """GCJ-02 minus WGS-84 at a WGS-84 position, in degrees."""
    dlat, dlon = _series(lon - 105.0, lat - 35.0)
    rad = math.radians(lat)
    magic = 1 - EE * math.sin(rad) ** 2
    root = math.sqrt(magic)
    dlat = dlat * 180.0 / ((A * (1 - EE)) / (magic * root) * math.pi)
    dlon = dlon * 180.0 / (A / root * math.cos(rad) * math.pi)
    return dlat, dlon


def wgs84_to_gcj02(lat: float, lon: float) -> tuple[float, float]:
    """A WGS-84 position as the Chinese web maps show it (GCJ-02): (lat, lon)."""
    if not in_china(lat, lon):
        return lat, lon
    dlat, dlon = _offset(lat, lon)
    return lat + dlat, lon + dlon


def gcj02_to_wgs84(lat: float, lon: float) -> tuple[float, float]:
    """A position read off a Chinese web map (GCJ-02) in WGS-84: (lat, lon), to within
    ``TOLERANCE_DEG`` of the exact inverse (see the module's docstring)."""
    if not in_china(lat, lon):
        return lat, lon
    w_lat, w_lon = lat, lon
    for _ in range(MAX_STEPS):
        g_lat, g_lon = wgs84_to_gcj02(w_lat, w_lon)
        step_lat, step_lon = g_lat - lat, g_lon - lon
        w_lat, w_lon = w_lat - step_lat, w_lon - step_lon
        if max(abs(step_lat), abs(step_lon)) < TOLERANCE_DEG:
            break
    return w_lat, w_lon
