"""The pure autoscaler: bounds, monotonicity, reaction time to a step, no flapping, idle to zero."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infernetes.operator.autoscaler import AutoscalerSettings, Sample, decide, parse_metrics

S = AutoscalerSettings(interval_s=2, target_utilization=0.75, smoothing_s=10, drain_s=4, scale_down_window_s=30,
                       idle_to_zero_s=120)


class Sim:
    """Workers whose model time grows with the offered load (capped at one second per second each)."""

    def __init__(self, current: int, bounds=(0, 8), per_input=0.01):
        self.current, self.bounds, self.per_input = current, bounds, per_input
        self.state = None
        self.t = 0.0
        self.totals = {}
        self.queue = 0.0
        self.history = []

    def step(self, offered_busy: float, held: int = 0):
        """offered_busy: allocations' worth of work arriving per second."""
        self.t += S.interval_s
        n = max(self.current, 0)
        backlog_busy = self.queue * self.per_input / S.interval_s  # work waiting, in allocations for an interval
        served = min(offered_busy + backlog_busy, n) if n else 0.0
        self.queue = max(0.0, self.queue + (offered_busy - served) * S.interval_s / self.per_input) if n else 0.0
        samples = []
        for i in range(n):
            inputs, busy = self.totals.get(str(i), (0.0, 0.0))
            share = served / n
            inputs += share * S.interval_s / self.per_input
            busy += share * S.interval_s
            self.totals[str(i)] = (inputs, busy)
            samples.append(Sample(str(i), queue=self.queue / n, in_flight=1 if share else 0, inputs=inputs,
                                  busy_s=busy))
        d = decide(self.state, samples, now=self.t, current=self.current, bounds=self.bounds, settings=S,
                   held=held if n == 0 else 0)
        self.state = d.state
        self.current = d.desired
        self.history.append(d.desired)
        return d


def test_step_load_scales_up_within_two_intervals():
    sim = Sim(current=1)
    sim.step(0.3)
    sim.step(0.3)
    assert sim.current == 1
    sim.step(3.0)  # a step: three allocations' worth of work
    sim.step(3.0)
    assert sim.current >= 4  # 3 busy / 0.75 target, plus the queue that built up


def test_first_request_at_zero_starts_one_allocation():
    sim = Sim(current=0)
    sim.step(0.0)
    assert sim.current == 0
    d = sim.step(0.0, held=1)
    assert d.desired == 1


def test_scale_down_waits_for_the_window_then_follows():
    sim = Sim(current=1)
    for _ in range(3):
        sim.step(3.0)
    for _ in range(int(S.scale_down_window_s / S.interval_s) - 1):
        sim.step(0.2)
        assert sim.current >= 4  # what the last busy interval needed holds for the stabilization window
    # Then down, as the smoothed load decays (time constant smoothing_s), to what 0.2 busy needs.
    for _ in range(int((S.scale_down_window_s + 5 * S.smoothing_s) / S.interval_s)):
        sim.step(0.2)
    assert sim.current == 1
    assert sim.history == sorted(sim.history[:3]) + sorted(sim.history[3:], reverse=True)  # no ups on the way


def test_idle_goes_to_zero_only_after_the_idle_period_and_only_with_min_zero():
    sim = Sim(current=1)
    sim.step(0.5)
    steps_to_zero = 0
    while sim.current > 0:
        sim.step(0.0)
        steps_to_zero += 1
        assert steps_to_zero < 200
    assert steps_to_zero * S.interval_s >= S.idle_to_zero_s
    keep_one = Sim(current=1, bounds=(1, 8))
    for _ in range(200):
        keep_one.step(0.0)
    assert keep_one.current == 1


def test_oscillating_load_near_a_threshold_does_not_flap():
    sim = Sim(current=2)
    for i in range(60):
        sim.step(1.5 if i % 2 else 1.45)  # right around what 2 allocations at 75% carry
    tail = sim.history[20:]
    changes = sum(1 for a, b in zip(tail, tail[1:]) if a != b)
    assert changes == 0


@pytest.mark.parametrize(("bounds", "load", "expected"), [
    ((1, 4), 100.0, 4),  # never above max
    ((3, 10), 0.1, 3),  # never below min
    ((0, 2), 1.2, 2),
])
def test_bounds(bounds, load, expected):
    sim = Sim(current=bounds[0] or 1, bounds=bounds)
    for _ in range(5):
        sim.step(load)
    assert sim.current == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=20), min_size=1, max_size=40), st.integers(0, 3),
       st.integers(0, 6))
def test_never_leaves_the_bounds(loads, lo, extra):
    hi = lo + max(1, extra)
    sim = Sim(current=lo, bounds=(lo, hi))
    for load in loads:
        sim.step(load)
        assert lo <= sim.current <= hi


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0, max_value=10), st.floats(min_value=0, max_value=10), st.integers(1, 6),
       st.floats(min_value=0, max_value=500))
def test_monotone_in_load(a, b, current, queue):
    low, high = sorted((a, b))

    def after(busy):
        first = [Sample("0", inputs=0, busy_s=0)]
        d = decide(None, first, now=0, current=current, bounds=(0, 100), settings=S)
        later = [Sample("0", queue=queue, inputs=busy * 200, busy_s=busy * 2)]
        return decide(d.state, later, now=2, current=current, bounds=(0, 100), settings=S).desired

    assert after(low) <= after(high)


def test_parse_metrics():
    text = """# HELP infernetes_queue_size Inputs waiting.
infernetes_queue_size{allocation="0",deployment="d"} 7.0
infernetes_requests_in_flight{allocation="0",deployment="d"} 2.0
infernetes_inference_inputs_total{allocation="0",deployment="d"} 1234.0
infernetes_inference_seconds_sum{allocation="0",deployment="d"} 56.5
infernetes_inference_seconds_count{allocation="0",deployment="d"} 99.0
"""
    assert parse_metrics("0", text) == Sample("0", queue=7, in_flight=2, inputs=1234, busy_s=56.5)
