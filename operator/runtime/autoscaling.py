"""The autoscaling loop of the embedded runtime: sample the workers, decide, start or stop workers.

Every ``interval_s`` (and at once when a request arrives for a deployment scaled to zero) each
adaptive deployment's allocations are scraped (``/metrics``), the pure autoscaler decides, and the
runtime scales: new worker processes start, or the newest ones get SIGTERM and finish what they
accepted before they exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import httpx
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..autoscaler import AutoscalerSettings, Sample, decide, parse_metrics

log = logging.getLogger("infernetes.autoscaler")


class AutoscalerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.desired = Gauge("infernetes_autoscaler_desired_allocations",
                             "Allocations the autoscaler wants for an adaptive deployment.", ["deployment"], registry=r)
        self.load = Gauge("infernetes_autoscaler_load",
                          "Load the autoscaler sees, in allocations kept busy (backlog included).",
                          ["deployment"], registry=r)
        self.decisions = Counter("infernetes_autoscaler_decisions",
                                 "Changes of an adaptive deployment's allocation count.", ["deployment", "direction"],
                                 registry=r)
        self.held = Gauge("infernetes_held_requests",
                          "Requests the gateway holds while a deployment has no ready allocation.", ["deployment"],
                          registry=r)

    def record(self, deployment: str, desired: int, load: float, previous: int | None) -> None:
        self.desired.labels(deployment).set(desired)
        self.load.labels(deployment).set(load)
        if previous is not None and desired != previous:
            self.decisions.labels(deployment, "up" if desired > previous else "down").inc()


class LocalAutoscaler:
    def __init__(self, runtime: Any, settings: AutoscalerSettings, metrics: AutoscalerMetrics) -> None:
        self.runtime = runtime
        self.settings = settings
        self.metrics = metrics
        self.states: dict[str, dict[str, Any]] = {}
        self.last_reason: dict[str, str] = {}
        self._client = httpx.AsyncClient(timeout=2.0, trust_env=False)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="infernetes-autoscaler")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _run(self) -> None:
        requests: asyncio.Queue[str] = self.runtime.scale_requests or asyncio.Queue()
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(requests.get(), self.settings.interval_s)
                await asyncio.sleep(0.01)  # let the other held requests of the burst register
            try:
                await self.tick()
            except Exception:  # a bad round must not stop autoscaling
                log.exception("autoscaling round failed")

    async def _sample(self, alloc: Any) -> Sample | None:
        try:
            resp = await self._client.get(alloc.url + "/metrics")
            return parse_metrics(str(alloc.index), resp.text)
        except httpx.HTTPError:
            return None

    async def tick(self) -> None:
        for dep in list(self.runtime.deployments.values()):
            spec = dep.spec
            if not spec.adaptive_enabled or dep.stopping or dep.model is None:
                continue
            started = [a for a in dep.allocations if a.state == "started"]
            samples = [s for s in await asyncio.gather(*(self._sample(a) for a in started)) if s is not None]
            bounds = self.runtime.bounds(spec)  # the max capped to what the machine has left
            decision = decide(self.states.get(spec.deployment_id), samples, now=time.monotonic(),
                              current=dep.target, bounds=bounds, settings=self.settings, held=dep.held)
            self.states[spec.deployment_id] = decision.state
            self.last_reason[spec.deployment_id] = decision.reason
            self.metrics.held.labels(spec.deployment_id).set(dep.held)
            self.metrics.record(spec.deployment_id, decision.desired, decision.load, dep.target)
            if decision.desired != dep.target:
                log.info("deployment %s: %d -> %d allocations (%s)", spec.deployment_id, dep.target,
                         decision.desired, decision.reason)
                await self.runtime.scale(spec.deployment_id, decision.desired)
