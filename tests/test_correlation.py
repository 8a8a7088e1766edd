"""Correlation core: which alerts form one incident. Tables, a fake clock."""

from __future__ import annotations

import pytest

from device_registry.alerts.correlation import (
    DEFAULT_RULES,
    Candidate,
    Rule,
    incident_for,
    lookback_ms,
)

T0 = 1_700_000_000_000
S = 1000


def cand(alert_id: str, at: int, *, grid: str = "FT-0042", category: str = "2201",
         device: str = "sd-001", gateway: str = "gw1", district: str = "futian",
         incident: str | None = "inc-1", waiting: bool = True) -> Candidate:  # fmt: skip
    return Candidate(alert_id, at, district, grid, category, gateway, device, incident, waiting)


@pytest.mark.parametrize(
    ("name", "new", "recent", "expected"),
    [
        (
            "second smoke detector, same cell, 30 s later",
            cand("a2", T0 + 30 * S, device="sd-002"),
            [cand("a1", T0)],
            "inc-1",
        ),
        (
            "same cell, 61 s later: a new incident",
            cand("a2", T0 + 61 * S, device="sd-002"),
            [cand("a1", T0)],
            None,
        ),
        (
            "chained: within a minute of the incident's latest alert",
            cand("a3", T0 + 100 * S, device="sd-003"),
            [cand("a1", T0), cand("a2", T0 + 50 * S, device="sd-002")],
            "inc-1",
        ),
        (
            "another grid cell",
            cand("a2", T0 + 5 * S, grid="FT-0043", device="sd-002"),
            [cand("a1", T0)],
            None,
        ),
        (
            "another category in the same cell",
            cand("a2", T0 + 5 * S, category="040301", device="gd-1"),
            [cand("a1", T0)],
            None,
        ),
        (
            "another district, same grid name",
            cand("a2", T0 + 5 * S, district="nanshan", device="sd-002"),
            [cand("a1", T0)],
            None,
        ),
        (
            "the earlier incident is resolved: a new one",
            cand("a2", T0 + 5 * S, device="sd-002"),
            [cand("a1", T0, waiting=False)],
            None,
        ),
        (
            "no grid cell: cells cannot group",
            cand("a2", T0 + 5 * S, grid="", device="sd-002"),
            [cand("a1", T0, grid="")],
            None,
        ),
        (
            "a camera's repeated detection, 5 min later, grid unknown",
            cand("c2", T0 + 300 * S, grid="", device="cam-1", category="050501"),
            [
                cand(
                    "c1",
                    T0,
                    grid="",
                    device="cam-1",
                    category="050501",
                    incident="inc-cam",
                )
            ],
            "inc-cam",
        ),
        (
            "the camera, 11 min later",
            cand("c2", T0 + 660 * S, grid="", device="cam-1", category="050501"),
            [cand("c1", T0, grid="", device="cam-1", category="050501")],
            None,
        ),
        (
            "the newest matching incident wins",
            cand("a3", T0 + 40 * S, device="sd-003"),
            [
                cand("a1", T0, incident="old"),
                cand("a2", T0 + 30 * S, device="sd-002", incident="new"),
            ],
            "new",
        ),
        ("itself (a redelivered raise) is not a candidate", cand("a1", T0), [cand("a1", T0)], None),
    ],
)
def test_default_rules(
    name: str, new: Candidate, recent: list[Candidate], expected: str | None
) -> None:
    assert incident_for(new, recent, DEFAULT_RULES) == expected, name


def test_rules_are_data_scoped_by_category() -> None:
    fire_only = (Rule("fire", ("22*",), ("district", "grid", "category"), 120 * S),)
    smoke = cand("a2", T0 + 90 * S, device="sd-002")
    gas = cand("g2", T0 + 5 * S, category="040301", device="gd-2")
    assert incident_for(smoke, [cand("a1", T0)], fire_only) == "inc-1"
    assert incident_for(gas, [cand("g1", T0, category="040301", device="gd-1")],
                        fire_only) is None  # fmt: skip
    assert lookback_ms(fire_only) == 120 * S
