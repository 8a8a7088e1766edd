"""What a simulated point reads at a given time: base + noise + a rain (or smoke) event.

Pure: time is an argument. The event ramps up over ``event_ramp_s``, holds ``event_hold_s``
and ramps back down, so a water level crosses its warning line and clears again.
"""

from __future__ import annotations

import random

from gridwatch.ground.profiles import SimBehaviour


def event_fraction(b: SimBehaviour, t: float) -> float:
    """0..1: how far into the event the point is at ``t`` seconds after start."""
    if b.event_at_s is None or t < b.event_at_s:
        return 0.0
    dt = t - b.event_at_s
    if dt < b.event_ramp_s:
        return dt / b.event_ramp_s
    dt -= b.event_ramp_s
    if dt < b.event_hold_s:
        return 1.0
    dt -= b.event_hold_s
    return max(0.0, 1.0 - dt / b.event_ramp_s)


class PointAnimator:
    """Successive values of one point; a counter counts its own updates."""

    def __init__(self, behaviour: SimBehaviour, rng: random.Random) -> None:
        self.b = behaviour
        self.rng = rng
        self.count = 0

    def value(self, t: float) -> float:
        b = self.b
        if b.counter:
            self.count += 1
            return float(self.count)
        jitter = self.rng.uniform(-b.noise, b.noise) if b.noise else 0.0
        return b.base + b.event_rise * event_fraction(b, t) + jitter
