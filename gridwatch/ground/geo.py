"""GCJ-02 <-> WGS-84: positions from Chinese web maps are offset, positions gridwatch stores are not.

Chinese web maps (Amap/高德, Tencent) publish coordinates in GCJ-02, a datum that shifts WGS-84 by
a few hundred metres in a way that varies smoothly with position (in Xuhui about 500 m). GPS
receivers, Leaflet's default tiles and gridwatch's stored ``lat``/``lon`` are WGS-84. A centroid
copied from Amap (``firmware_configs/places``) is therefore converted before it is used as a
position; leaving it as it is would put a crew half a kilometre off.

The forward transform is the published GCJ-02 approximation (Krasovsky 1940 ellipsoid and the
well-known polynomial correction); it has no closed-form inverse, so ``gcj02_to_wgs84``
iterates the forward one until it returns the given point (to ~1 mm). Outside China's bounding
box GCJ-02 is WGS-84 and both functions return the point unchanged.
"""

from __future__ import annotations

import math

_A = 6378245.0  # semi-major axis of the Krasovsky 1940 ellipsoid, metres
_EE = 0.00669342162296594323  # its first eccentricity squared
_CHINA = (72.004, 137.8347, 0.8293, 55.8271)  # lon min, lon max, lat min, lat max
_TOLERANCE_DEG = 1e-8  # about 1 mm
_MAX_STEPS = 20  # converges in 3-5 steps; a bound, not a tuning knob


def in_china(lon: float, lat: float) -> bool:
    """Inside the box where GCJ-02 differs from WGS-84."""
    lon_min, lon_max, lat_min, lat_max = _CHINA
    return lon_min <= lon <= lon_max and lat_min <= lat <= lat_max


def _shift_lat(x: float, y: float) -> float:
    pi = math.pi
    out = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * math.sqrt(abs(x))
    out += (20.0 * math.sin(6.0 * x * pi) + 20.0 * math.sin(2.0 * x * pi)) * 2.0 / 3.0
    out += (20.0 * math.sin(y * pi) + 40.0 * math.sin(y / 3.0 * pi)) * 2.0 / 3.0
    out += (160.0 * math.sin(y / 12.0 * pi) + 320.0 * math.sin(y * pi / 30.0)) * 2.0 / 3.0
    return out


def _shift_lon(x: float, y: float) -> float:
    pi = math.pi
    out = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * math.sqrt(abs(x))
    out += (20.0 * math.sin(6.0 * x * pi) + 20.0 * math.sin(2.0 * x * pi)) * 2.0 / 3.0
    out += (20.0 * math.sin(x * pi) + 40.0 * math.sin(x / 3.0 * pi)) * 2.0 / 3.0
    out += (150.0 * math.sin(x / 12.0 * pi) + 300.0 * math.sin(x / 30.0 * pi)) * 2.0 / 3.0
    return out


def wgs84_to_gcj02(lon: float, lat: float) -> tuple[float, float]:
    """Where a Chinese web map draws a WGS-84 point: (lon, lat) in GCJ-02."""
    if not in_china(lon, lat):
        return lon, lat
    dlat = _shift_lat(lon - 105.0, lat - 35.0)
    dlon = _shift_lon(lon - 105.0, lat - 35.0)
    rad = lat / 180.0 * math.pi
    magic = 1.0 - _EE * math.sin(rad) ** 2
    dlat = (dlat * 180.0) / ((_A * (1.0 - _EE)) / (magic * math.sqrt(magic)) * math.pi)
    dlon = (dlon * 180.0) / (_A / math.sqrt(magic) * math.cos(rad) * math.pi)
    return lon + dlon, lat + dlat


def gcj02_to_wgs84(lon: float, lat: float) -> tuple[float, float]:
    """The WGS-84 point a Chinese web map's (lon, lat) stands for."""
    if not in_china(lon, lat):
        return lon, lat
    wlon, wlat = lon, lat
    for _ in range(_MAX_STEPS):
        glon, glat = wgs84_to_gcj02(wlon, wlat)
        elon, elat = glon - lon, glat - lat
        if abs(elon) < _TOLERANCE_DEG and abs(elat) < _TOLERANCE_DEG:
            break
        wlon, wlat = wlon - elon, wlat - elat
    return wlon, wlat
