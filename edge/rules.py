"""Detection rules: a pure core that turns samples into alert transitions.

No I/O and no clock of its own: every call takes the time (epoch ms), so the tests drive it with
tables and a fake clock. Each rule keeps only the state it needs; ``restore`` puts back an alert
that was active before a restart, so it is neither raised again nor forgotten.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from drivers.base import PollOutcome
from gridwatch.ground.contract import AlertState, Quality, Value
from gridwatch.ground.profiles import NoDataRule, OfflineRule, RateRule, Rule, ThresholdRule


@dataclass(frozen=True, slots=True)
class Transition:
    rule: Rule
    device: str
    point: str
    state: AlertState
    value: Value
    peak: Value
    threshold: float | None
    ts: int


def message_for(rule: Rule, state: AlertState) -> str:
    """The alert's text for a transition: a cleared alert says it cleared, never the raise text
    (a crew reading 'Water level above warning line: 1.82 m' goes out to a flood that is over)."""
    if state is not AlertState.CLEARED:
        return rule.message
    if rule.clear_message:
        return rule.clear_message
    return f"Cleared: {rule.message}" if rule.message else "Cleared"


class _Debounce:
    """A condition must hold for N samples and T seconds before it counts."""

    __slots__ = ("count", "need_ms", "need_samples", "since")

    def __init__(self, samples: int, seconds: float) -> None:
        self.need_samples = samples
        self.need_ms = seconds * 1000
        self.count = 0
        self.since: int | None = None

    def feed(self, holds: bool, ts: int) -> bool:
        if not holds:
            self.count, self.since = 0, None
            return False
        self.count += 1
        if self.since is None:
            self.since = ts
        return self.count >= self.need_samples and ts - self.since >= self.need_ms

    def reset(self) -> None:
        self.count, self.since = 0, None


class ThresholdState:
    """Above / below / outside a band, with hysteresis and debounce both ways."""

    def __init__(self, rule: ThresholdRule, device: str) -> None:
        self.rule, self.device = rule, device
        self.active = False
        self.peak: float | None = None
        self.reported_peak: float | None = None
        self._raise = _Debounce(rule.debounce_samples, rule.debounce_s)
        self._clear = _Debounce(rule.debounce_samples, rule.debounce_s)

    def _violated(self, v: float) -> bool:
        r = self.rule
        return (r.above is not None and v > r.above) or (r.below is not None and v < r.below)

    def _back_inside(self, v: float) -> bool:
        r, h = self.rule, self.rule.hysteresis
        return (r.above is None or v <= r.above - h) and (r.below is None or v >= r.below + h)

    def _threshold_for(self, v: float) -> float | None:
        r = self.rule
        if r.above is not None and (r.below is None or v > r.above):
            return r.above
        return r.below

    def _more_extreme(self, v: float, than: float | None) -> bool:
        if than is None:
            return True
        upward = self.rule.above is not None and (self.rule.below is None or v > self.rule.above)
        return v > than if upward else v < than

    def feed(self, v: float, ts: int) -> Transition | None:
        if not self.active:
            if self._raise.feed(self._violated(v), ts):
                self.active, self.peak, self.reported_peak = True, v, v
                self._raise.reset()
                return self._t(AlertState.RAISED, v, ts)
            return None
        if self._more_extreme(v, self.peak):
            self.peak = v
        if self._clear.feed(self._back_inside(v), ts):
            self.active = False
            self._clear.reset()
            return self._t(AlertState.CLEARED, v, ts)
        # an update only when the peak moved by more than the hysteresis: no flood while high
        step = max(self.rule.hysteresis, 1e-9)
        moved = self.peak is not None and self.reported_peak is not None
        if moved and abs(self.peak - self.reported_peak) > step:  # type: ignore[operator]
            self.reported_peak = self.peak
            return self._t(AlertState.UPDATED, v, ts)
        return None

    def _t(self, state: AlertState, v: float, ts: int) -> Transition:
        return Transition(
            self.rule, self.device, self.rule.point, state, v, self.peak,
            self._threshold_for(self.peak if self.peak is not None else v), ts,
        )  # fmt: skip


class RateState:
    """Rise (or fall) of more than X within Y seconds; clears when the change halves."""

    def __init__(self, rule: RateRule, device: str) -> None:
        self.rule, self.device = rule, device
        self.active = False
        self.peak: float | None = None
        self.window: deque[tuple[int, float]] = deque()

    def feed(self, v: float, ts: int) -> Transition | None:
        horizon = ts - self.rule.window_s * 1000
        self.window.append((ts, v))
        while self.window and self.window[0][0] < horizon:
            self.window.popleft()
        low = min(x for _, x in self.window)
        high = max(x for _, x in self.window)
        change = max(
            (v - low) / self.rule.rise if self.rule.rise else 0.0,
            (high - v) / self.rule.fall if self.rule.fall else 0.0,
        )  # 1.0 means exactly the configured rate
        if not self.active and change >= 1.0:
            self.active, self.peak = True, v
            return self._t(AlertState.RAISED, v, ts)
        if self.active and change < 0.5:
            self.active = False
            return self._t(AlertState.CLEARED, v, ts)
        return None

    def _t(self, state: AlertState, v: float, ts: int) -> Transition:
        limit = self.rule.rise if self.rule.rise is not None else self.rule.fall
        return Transition(self.rule, self.device, self.rule.point, state, v, self.peak, limit, ts)


class DeviceRules:
    """Every rule of one device, fed with its poll outcomes and with clock ticks."""

    def __init__(self, device: str, rules: list[Rule], interval_s: float, now: int) -> None:
        self.device = device
        self.interval_ms = interval_s * 1000
        self.by_point: dict[str, list[ThresholdState | RateState]] = {}
        self.no_data = [r for r in rules if isinstance(r, NoDataRule)]
        self.offline = [r for r in rules if isinstance(r, OfflineRule)]
        self.states: dict[str, ThresholdState | RateState] = {}
        for r in rules:
            if isinstance(r, ThresholdRule | RateRule):
                st = (
                    ThresholdState(r, device)
                    if isinstance(r, ThresholdRule)
                    else RateState(r, device)
                )
                self.by_point.setdefault(r.point, []).append(st)
                self.states[r.id] = st
        self.active_flags: set[str] = set()  # ids of active no_data / offline alerts
        self.failures = 0
        self.last_ok = now  # a device is not silent before its first chance to speak

    def restore(self, rule_id: str, peak: Value) -> None:
        """Mark a rule's alert active again after a restart."""
        st = self.states.get(rule_id)
        if st is not None:
            st.active = True
            if isinstance(peak, int | float) and not isinstance(peak, bool):
                st.peak = float(peak)
                if isinstance(st, ThresholdState):
                    st.reported_peak = st.peak
        else:
            self.active_flags.add(rule_id)

    def feed(self, outcome: PollOutcome) -> list[Transition]:
        out: list[Transition] = []
        if outcome.ok:
            self.failures = 0
            self.last_ok = outcome.ts
            out += self._flag_rules(self.offline + self.no_data, False, outcome.ts)  # type: ignore[operator]
        else:
            self.failures += 1
            failing = [r for r in self.offline if self.failures >= r.failures]
            out += self._flag_rules(failing, True, outcome.ts)
        for s in outcome.samples:
            states = self.by_point.get(s.point)
            if not states or s.quality is not Quality.GOOD:
                continue
            v = s.value
            if isinstance(v, bool) or not isinstance(v, int | float):
                continue
            for st in states:
                t = st.feed(float(v), s.ts)
                if t is not None:
                    out.append(t)
        return out

    def tick(self, now: int) -> list[Transition]:
        silent = [r for r in self.no_data if now - self.last_ok > r.factor * self.interval_ms]
        return self._flag_rules(silent, True, now)

    def _flag_rules(
        self, rules: list[NoDataRule] | list[OfflineRule], active: bool, ts: int
    ) -> list[Transition]:
        out = []
        for r in rules:
            if (r.id in self.active_flags) == active:
                continue
            if active:
                self.active_flags.add(r.id)
            else:
                self.active_flags.discard(r.id)
            state = AlertState.RAISED if active else AlertState.CLEARED
            value = float(self.failures) if isinstance(r, OfflineRule) else None
            out.append(Transition(r, self.device, "", state, value, value, None, ts))
        return out
