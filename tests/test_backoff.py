"""The one backoff (``gridwatch.ground.backoff``): its schedule, its jitter from a seeded random,
its bounds after a very long outage, and the schedules it refuses."""

from __future__ import annotations

import random

import pytest

from gridwatch.ground.backoff import Backoff

# (first_s, cap_s, waits after failures 0, 1, 2, ... with no jitter)
SCHEDULES: list[tuple[float, float, list[float]]] = [
    (0.05, 1.0, [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]),
    (0.2, 5.0, [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]),
    (1.0, 1.0, [1.0, 1.0, 1.0]),  # a fixed pace
    (0.3, 1.0, [0.3, 0.6, 1.0, 1.0]),  # the cap cuts a doubling short
]


@pytest.mark.parametrize(("first", "cap", "waits"), SCHEDULES)
def test_backoff_schedule_without_jitter(first: float, cap: float, waits: list[float]) -> None:
    b = Backoff(first, cap, jitter=0.0)
    assert [b.next() for _ in waits] == pytest.approx(waits)
    b.reset()
    assert b.next() == pytest.approx(first)


def test_backoff_jitter_from_a_seeded_random_stays_within_its_band() -> None:
    # Random(7).random() gives 0.3238..., 0.1508..., 0.6509... for the first three draws
    b = Backoff(0.1, 1.0, jitter=0.5, rng=random.Random(7))
    assert [b.next() for _ in range(3)] == pytest.approx(
        [0.1 * (0.5 + 0.5 * 0.32383276483316237), 0.2 * (0.5 + 0.5 * 0.15084917392450192),
         0.4 * (0.5 + 0.5 * 0.6509344730398537)]
    )  # fmt: skip
    many = Backoff(0.1, 1.0, jitter=0.5, rng=random.Random(1))
    waits = [many.delay(10) for _ in range(1000)]
    assert min(waits) >= 0.5 and max(waits) <= 1.0
    assert max(waits) - min(waits) > 0.4  # spread, not one value: clients do not come back in step


# (attempt, wait with first 0.05, cap 1.0, no jitter): a long outage neither overflows nor grows
ATTEMPTS: list[tuple[int, float]] = [(0, 0.05), (4, 0.8), (1_000, 1.0), (10**9, 1.0), (-1, 0.05)]


@pytest.mark.parametrize(("attempt", "wait"), ATTEMPTS)
def test_backoff_after_many_failures(attempt: int, wait: float) -> None:
    assert Backoff(0.05, 1.0, jitter=0.0).delay(attempt) == pytest.approx(wait)


# (first_s, cap_s, jitter, what the error names)
BAD_BACKOFFS: list[tuple[float, float, float, str]] = [
    (0.0, 1.0, 0.5, "first_s=0.0"),
    (2.0, 1.0, 0.5, "cap_s=1.0"),
    (0.1, 1.0, 1.0, "jitter must be in [0, 1), got 1.0"),
]


@pytest.mark.parametrize(("first", "cap", "jitter", "says"), BAD_BACKOFFS)
def test_backoff_refuses_a_schedule_that_makes_no_sense(
    first: float, cap: float, jitter: float, says: str
) -> None:
    with pytest.raises(ValueError, match=f"backoff: .*{says.replace('[', '.').replace(')', '.')}"):
        Backoff(first, cap, jitter=jitter)
