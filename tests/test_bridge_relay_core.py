"""The pure part of relaying alerts while the registry does not answer (``cloud_bridge.relay``):
which platform alerts are still to publish, and what the bridge remembers of each device."""

from __future__ import annotations

import pytest

from cloud_bridge.claims import ClaimBook, claim_topic, claimed_transition
from cloud_bridge.core import PlatformOut, transition_key
from cloud_bridge.relay import FactsCache, fresh
from device_registry.ingest.changes import DeviceFacts
from gridwatch.ground.contract import Location, Topics


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


# ---- claims: what the members of a share group said they published (``cloud_bridge.claims``) --

# (topic, the transition it claims)
CLAIM_TOPICS: list[tuple[str, str | None]] = [
    ("p/gw/gw1/published/m-1", "gw1/m-1"),
    ("p/gw/gw1/published/", None),  # no message id
    ("p/gw/gw1/published/m/1", None),  # ids hold no "/"
    ("p/gw/gw1/alert", None),
    ("q/gw/gw1/published/m-1", None),  # another prefix
]


@pytest.mark.parametrize(("topic", "transition"), CLAIM_TOPICS)
def test_a_claims_topic_names_its_transition(topic: str, transition: str | None) -> None:
    topics = Topics("p")
    assert claimed_transition(topics, topic) == transition
    if transition is not None:
        assert claim_topic(topics, transition) == topic
        assert transition == transition_key("gw1", "m-1")


# (claims heard as (transition, at ms), asked at, limit, claimed)
BOOK: list[tuple[list[tuple[str, int]], int, int, set[str]]] = [
    ([], 0, 10, set()),
    ([("a", 0)], 1_000, 10, {"a"}),
    ([("a", 0)], 60_000, 10, {"a"}),  # as old as a claim lives: still claimed
    ([("a", 0)], 60_001, 10, set()),  # expired at the broker: forgotten here too
    ([("a", 0), ("a", 50_000)], 100_000, 10, {"a"}),  # heard again: lives on
    ([("a", 0), ("b", 1), ("c", 2)], 10, 2, {"b", "c"}),  # over the bound: the oldest go
]


@pytest.mark.parametrize(("heard", "now", "limit", "claimed"), BOOK)
def test_the_claim_book_remembers_a_claim_as_long_as_it_lives(
    heard: list[tuple[str, int]], now: int, limit: int, claimed: set[str]
) -> None:
    book = ClaimBook(keep_ms=60_000, limit=limit)
    for transition, at in heard:
        book.add([transition], at)
    assert book.claimed(["a", "b", "c"], now) == claimed
    book.prune(now)
    assert len(book) == len(claimed)
