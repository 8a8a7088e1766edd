"""GCJ-02 <-> WGS-84 (gridwatch/ground/geo.py) against published reference points, and the
inverse's round-trip error bound over the district and over China."""

from __future__ import annotations

import itertools

import pytest

from gridwatch.ground.geo import TOLERANCE_DEG, gcj02_to_wgs84, in_china, wgs84_to_gcj02

# (WGS-84 lat, lon) -> (GCJ-02 lat, lon): the test points published with the eviltransform
# library (Shanghai, Shenzhen, Beijing) and the coordtransform library's example (Tiananmen)
REFERENCE = [
    ((31.1774276, 121.5272106), (31.17530398364597, 121.531541859215)),
    ((22.543847, 113.912316), (22.540796131694766, 113.9171764808363)),
    ((39.911954, 116.377817), (39.91334545536069, 116.38404722455657)),
    ((39.915, 116.404), (39.91640428150164, 116.41024449916938)),
]


@pytest.mark.parametrize(("wgs", "gcj"), REFERENCE)
def test_forward_matches_the_published_points(
    wgs: tuple[float, float], gcj: tuple[float, float]
) -> None:
    assert wgs84_to_gcj02(*wgs) == pytest.approx(gcj, abs=1e-12)


@pytest.mark.parametrize(("wgs", "gcj"), REFERENCE)
def test_inverse_finds_the_published_points(
    wgs: tuple[float, float], gcj: tuple[float, float]
) -> None:
    assert gcj02_to_wgs84(*gcj) == pytest.approx(wgs, abs=1e-9)


def test_the_shift_in_xuhui_is_hundreds_of_metres() -> None:
    """Why it matters: a position copied from a Chinese web map is a street away."""
    lat, lon = 31.1884, 121.4365  # near 徐家汇, WGS-84
    g_lat, g_lon = wgs84_to_gcj02(lat, lon)
    metres = ((g_lat - lat) * 111_320, (g_lon - lon) * 111_320 * 0.8556)  # cos(31.19 deg)
    assert 300 < (metres[0] ** 2 + metres[1] ** 2) ** 0.5 < 700, metres


def grid(lat0: float, lat1: float, lon0: float, lon1: float, n: int) -> list[tuple[float, float]]:
    lats = [lat0 + (lat1 - lat0) * i / (n - 1) for i in range(n)]
    lons = [lon0 + (lon1 - lon0) * i / (n - 1) for i in range(n)]
    return list(itertools.product(lats, lons))


@pytest.mark.parametrize(
    ("where", "points"),
    [
        ("Xuhui", grid(31.10, 31.23, 121.40, 121.48, 12)),
        ("China", grid(18.0, 53.0, 74.0, 134.0, 15)),
    ],
)
def test_round_trip_error_is_below_a_billionth_of_a_degree(
    where: str, points: list[tuple[float, float]]
) -> None:
    worst = 0.0
    for gcj in points:
        back = wgs84_to_gcj02(*gcj02_to_wgs84(*gcj))
        worst = max(worst, abs(back[0] - gcj[0]), abs(back[1] - gcj[1]))
    assert worst < 1e-9, (where, worst)
    assert TOLERANCE_DEG <= 1e-9


@pytest.mark.parametrize(
    ("lat", "lon", "inside"),
    [
        (31.19, 121.44, True),  # Xuhui
        (51.5, -0.12, False),  # London: WGS-84 and GCJ-02 are the same there
        (1.35, 103.8, True),  # Singapore: inside the algorithm's rough box (a known simplification)
        (-33.9, 151.2, False),  # Sydney
    ],
)
def test_outside_the_box_positions_pass_unchanged(lat: float, lon: float, inside: bool) -> None:
    assert in_china(lat, lon) is inside
    if not inside:
        assert wgs84_to_gcj02(lat, lon) == (lat, lon) == gcj02_to_wgs84(lat, lon)
