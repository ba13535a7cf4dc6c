"""Adaptive allocations: how many allocations a deployment needs, decided purely from samples.

The pipeline, one small step each (all pure; state in, state out):

1. **sample** the workers' ``/metrics``: queue size, requests in flight, inputs done and model busy
   seconds (both counters) per allocation, plus the requests the gateway holds while none is ready;
2. **load** = allocations kept busy over the last interval (Δ busy seconds / Δ t: arrival rate ×
   inference time) plus the **backlog** (queued and held inputs × seconds per input, to be drained
   within ``drain_s``); the busy part is smoothed downwards only (fast up, slow down);
3. **recommend** ``ceil(load / target_utilization)``, at least 1 while there is any traffic;
4. **scale up** at once; **scale down** only to the highest recommendation of the last
   ``scale_down_window_s`` (no flapping); **to zero** only after ``idle_to_zero_s`` without any
   traffic, and only when the minimum is 0;
5. **clamp** to [min, max] (an unset max is the safe cap).

The state is a small dict, so the Kubernetes runtime keeps it in the resource's status and a
restarted operator carries on where the last one stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AutoscalerSettings:
    interval_s: float = 2.0  # how often samples are taken and decisions made
    target_utilization: float = 0.75  # busy fraction an allocation should run at
    smoothing_s: float = 10.0  # time constant of the load's downward smoothing
    drain_s: float = 4.0  # a backlog should be worked off within this time
    scale_down_window_s: float = 30.0  # scale down only to the highest recommendation of this window
    idle_to_zero_s: float = 300.0  # no traffic for this long before scaling to zero (when min is 0)

    def describe(self) -> dict[str, float]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Sample:
    """One allocation's metrics at one moment."""

    allocation: str
    queue: float = 0.0  # inputs waiting (gauge)
    in_flight: float = 0.0  # requests accepted, not answered (gauge)
    inputs: float = 0.0  # inputs run through the model (counter)
    busy_s: float = 0.0  # seconds the model was busy (counter)


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    load: float
    state: dict[str, Any]


def _traffic(samples: list[Sample], held: int, inputs_done: float) -> bool:
    return held > 0 or inputs_done > 0 or any(s.queue > 0 or s.in_flight > 0 for s in samples)


def decide(
    state: dict[str, Any] | None,
    samples: list[Sample],
    *,
    now: float,
    current: int,
    bounds: tuple[int, int],
    settings: AutoscalerSettings,
    held: int = 0,
) -> Decision:
    """The allocation count a deployment should have now; ``state`` is what the last call returned."""
    state = dict(state or {})
    lo, hi = bounds
    last_time = state.get("time")
    totals: dict[str, list[float]] = state.get("totals", {})
    dt = max(1e-3, now - last_time) if last_time is not None else None

    # 1-2. Load from the counters' progress since the last sample (a restarted worker's counters start over).
    busy = inputs_done = 0.0
    new_totals = {}
    for s in samples:
        new_totals[s.allocation] = [s.inputs, s.busy_s]
        prev = totals.get(s.allocation)
        if prev is not None and dt is not None:
            d_inputs, d_busy = s.inputs - prev[0], s.busy_s - prev[1]
            if d_inputs >= 0 and d_busy >= 0:
                inputs_done += d_inputs
                busy += d_busy
    instant_busy = busy / dt if dt else 0.0
    # Seconds per input as measured so far (a smoothed estimate, updated after it is used below).
    per_input = state.get("per_input_s", 0.05)
    smoothed = state.get("busy", 0.0)
    if instant_busy >= smoothed:
        smoothed = instant_busy
    elif dt is not None:
        smoothed += (instant_busy - smoothed) * (1 - math.exp(-dt / settings.smoothing_s))
    backlog_inputs = sum(s.queue for s in samples) + held
    backlog = backlog_inputs * per_input / settings.drain_s
    load = smoothed + backlog
    if inputs_done > 0:
        per_input += (busy / inputs_done - per_input) * 0.5

    # 3. What the load asks for.
    traffic = _traffic(samples, held, inputs_done)
    recommended = math.ceil(load / settings.target_utilization - 1e-9) if load > 0 else 0
    if traffic:
        recommended = max(recommended, 1)
        state["last_traffic"] = now
    history = [(t, r) for t, r in state.get("history", []) if now - t < settings.scale_down_window_s]
    history.append((now, recommended))

    # 4. Up at once, down to the window's highest, zero only after a long idle.
    if recommended > current:
        desired, reason = recommended, f"load {load:.2f} allocations busy needs {recommended}"
    else:
        desired = max(r for _, r in history)
        reason = f"load {load:.2f}; highest need in the last {settings.scale_down_window_s:g}s is {desired}"
        if desired == 0:
            idle_for = now - state.get("last_traffic", state.get("since", now))
            if idle_for < settings.idle_to_zero_s:
                desired = max(1, min(current, 1)) if current > 0 else 0
                reason = f"idle for {idle_for:.0f}s (scale to zero after {settings.idle_to_zero_s:g}s)"
            else:
                reason = f"idle for {idle_for:.0f}s"

    # 5. Within bounds.
    clamped = min(max(desired, lo), hi)
    if clamped != desired:
        reason += f"; kept within [{lo}, {hi}]"
    state.update(time=now, totals=new_totals, busy=smoothed, per_input_s=per_input, history=history[-200:])
    state.setdefault("since", now)
    return Decision(clamped, reason, round(load, 4), state)


# -- reading samples --------------------------------------------------------------------------------

METRIC_NAMES = {
    "infernetes_queue_size": "queue",
    "infernetes_requests_in_flight": "in_flight",
    "infernetes_inference_inputs_total": "inputs",
    "infernetes_inference_seconds_sum": "busy_s",
}


def parse_metrics(allocation: str, text: str) -> Sample:
    """A sample from one worker's Prometheus text exposition."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name_and_labels, _, value = line.rpartition(" ")
        name = name_and_labels.split("{", 1)[0]
        field = METRIC_NAMES.get(name)
        if field is not None:
            try:
                values[field] = values.get(field, 0.0) + float(value)
            except ValueError:
                continue
    return Sample(allocation=allocation, **values)
