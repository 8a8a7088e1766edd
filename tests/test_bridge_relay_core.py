"""The pure part of relaying alerts while the registry does not answer (``cloud_bridge.relay``):
which platform alerts are still to publish, and what the bridge remembers of each device."""

from __future__ import annotations

import pytest

from cloud_bridge.core import PlatformOut, transition_key
from cloud_bridge.relay import FactsCache, fresh
from device_registry.ingest.changes import DeviceFacts
from gridwatch.ground.contract import Location


def out(transition: str) -> PlatformOut:
    return PlatformOut(transition, f"p/platform/alert/north/W-01/major#{transition}", b"{}")


@pytest.mark.parametrize(
    ("planned", "published", "expected"),
    [
        ([], set(), []),
        (["a", "b"], set(), ["a", "b"]),
        (["a", "b"], {"a"}, ["b"]),  # the relay published it: the registry's step does not
        (["a", "b"], {"a", "b"}, []),
        (["a", "a", "b"], set(), ["a", "b"]),  # a batch with the same transition twice
        (["b", "a", "b", "c"], {"c"}, ["b", "a"]),  # order kept: a raise before its clear
        (["a"], {"x", "y"}, ["a"]),
    ],
)
def test_fresh_publishes_each_transition_once(
    planned: list[str], published: set[str], expected: list[str]
) -> None:
    assert [o.transition for o in fresh([out(t) for t in planned], published)] == expected


def test_a_transition_is_keyed_by_its_gateway_and_message_id() -> None:
    # one gateway reusing another's message id does not hide the other's alert
    assert transition_key("gw1", "m1") != transition_key("gw2", "m1")
    assert transition_key("gw1", "m1") == transition_key("gw1", "m1")


NORTH = Location(district="north", street="Main St", grid="G7")
SOUTH = Location(district="south", street="Quay", grid="A1")


@pytest.mark.parametrize(
    ("told", "asked", "owners", "places", "unknown"),
    [
        # never asked: unknown, the relay places the alert by its payload (and says so)
        ([], [("g1", "d1")], {}, {}, {("g1", "d1")}),
        # asked, not registered: known, no owner, no place
        ([({("g1", "d1")}, DeviceFacts())], [("g1", "d1")], {}, {}, set()),
        # registered to g1 at north
        (
            [({("g1", "d1")}, DeviceFacts({"d1": frozenset({"g1"})}, {("g1", "d1"): NORTH}))],
            [("g1", "d1")], {"d1": frozenset({"g1"})}, {("g1", "d1"): NORTH}, set(),
        ),
        # registered to g2: another gateway's device (the core refuses g1's alert about it)
        (
            [({("g1", "d1")}, DeviceFacts({"d1": frozenset({"g2"})}))],
            [("g1", "d1")], {"d1": frozenset({"g2"})}, {}, set(),
        ),
        # the last word counts: moved from north to south, then its site removed
        (
            [
                ({("g1", "d1")}, DeviceFacts({"d1": frozenset({"g1"})}, {("g1", "d1"): NORTH})),
                ({("g1", "d1")}, DeviceFacts({"d1": frozenset({"g1"})}, {("g1", "d1"): SOUTH})),
            ],
            [("g1", "d1")], {"d1": frozenset({"g1"})}, {("g1", "d1"): SOUTH}, set(),
        ),
        (
            [
                ({("g1", "d1")}, DeviceFacts({"d1": frozenset({"g1"})}, {("g1", "d1"): NORTH})),
                ({("g1", "d1")}, DeviceFacts({"d1": frozenset({"g1"})})),
            ],
            [("g1", "d1")], {"d1": frozenset({"g1"})}, {}, set(),
        ),
        # retired since: the registry no longer names an owner
        (
            [
                ({("g1", "d1")}, DeviceFacts({"d1": frozenset({"g1"})}, {("g1", "d1"): NORTH})),
                ({("g1", "d1")}, DeviceFacts()),
            ],
            [("g1", "d1")], {}, {}, set(),
        ),
        # only what is asked comes back
        (
            [({("g1", "d1"), ("g1", "d2")}, DeviceFacts({"d2": frozenset({"g1"})}))],
            [("g1", "d1"), ("g1", "d3")], {}, {}, {("g1", "d3")},
        ),
    ],
)  # fmt: skip
def test_facts_cache_recalls_the_registrys_last_word(
    told: list[tuple[set[tuple[str, str]], DeviceFacts]],
    asked: list[tuple[str, str]],
    owners: dict[str, frozenset[str]],
    places: dict[tuple[str, str], Location],
    unknown: set[tuple[str, str]],
) -> None:
    cache = FactsCache()
    for named, facts in told:
        cache.remember(named, facts)
    got, missing = cache.recall(asked)
    assert (got.owners, got.locations, missing) == (owners, places, unknown)


def test_facts_cache_starts_again_past_its_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cloud_bridge.relay.FACTS_MAX", 3)
    cache = FactsCache()
    cache.remember({("g1", "d1"), ("g1", "d2")}, DeviceFacts())
    cache.remember({("g1", "d3"), ("g1", "d4")}, DeviceFacts())  # past 3: d1, d2 forgotten
    _, unknown = cache.recall([("g1", "d1"), ("g1", "d2"), ("g1", "d3"), ("g1", "d4")])
    assert unknown == {("g1", "d1"), ("g1", "d2")}
