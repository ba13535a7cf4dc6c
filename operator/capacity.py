"""Admission against the machine's capacity (the embedded runtime).

Elasticsearch refuses a deployment its ML nodes cannot hold (429 "Could not start deployment because
there are not enough resources to provide all requested allocations"). Here the machine is the one
node: a deployment asks for allocations x threads processors, and

- one deployment may ask for at most ``processors`` (the CPUs this process may run on, unless
  ``--max-allocated-processors`` / ``$INFERNETES_MAX_ALLOCATED_PROCESSORS`` says otherwise);
- all deployments together for at most ``OVERCOMMIT`` (16) x ``processors``: an embedded server
  often keeps several models on a few cores, most of them idle (a test session, a demo), but
  beyond that the worker processes only cost memory and file descriptors (the issue's 100000
  allocations ran the server out of them) and none of them gets CPU time.

An adaptive deployment is admitted on its minimum; its maximum is capped at run time to what fits.
Pure functions, no I/O: the service and the local runtime share them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import CapacityExceeded
from .records import Deployment

ENV = "INFERNETES_MAX_ALLOCATED_PROCESSORS"
OVERCOMMIT = 16


def machine_processors() -> int:
    """CPUs this process may run on (its affinity mask, which containers and taskset narrow)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Capacity:
    processors: int
    overcommit: int = OVERCOMMIT

    @classmethod
    def of_machine(cls, cap: int | None = None) -> Capacity:
        """The machine's processors, or ``cap`` (else ``$INFERNETES_MAX_ALLOCATED_PROCESSORS``) when one is set:
        lower to keep cores for other work, higher to overcommit deliberately (e.g. Elasticsearch's documented
        example of at least 3 allocations on a 2-core laptop)."""
        if cap is None and os.environ.get(ENV):
            try:
                cap = int(os.environ[ENV])
            except ValueError:
                raise ValueError(f"${ENV} must be a positive integer, got [{os.environ[ENV]}]") from None
        if cap is not None and cap < 1:
            raise ValueError(f"the processor cap must be a positive integer, got [{cap}]")
        return cls(cap if cap is not None else machine_processors())

    @property
    def total(self) -> int:
        return self.processors * self.overcommit

    def max_allocations(self, dep: Deployment, others: Iterable[Deployment] = ()) -> int:
        """The most allocations ``dep`` may run now: the per-deployment bound and what the others leave."""
        left = self.total - sum(demand(d) for d in others if d.deployment_id != dep.deployment_id)
        return max(0, min(self.processors, left) // max(1, dep.num_threads))

    def admit(self, dep: Deployment, others: Iterable[Deployment] = ()) -> None:
        """Raise :class:`CapacityExceeded` (Elasticsearch's 429) when ``dep`` does not fit beside ``others``."""
        others = [d for d in others if d.deployment_id != dep.deployment_id]
        wanted = demand(dep)
        used = sum(demand(d) for d in others)
        fits = self.max_allocations(dep, others)
        if wanted <= self.processors and used + wanted <= self.total:
            return
        what = "the minimum of [adaptive_allocations]" if dep.adaptive_enabled else "[number_of_allocations]"
        raise CapacityExceeded(
            f"Could not start deployment [{dep.deployment_id}] because there are not enough resources to provide "
            f"all requested allocations: {what} x [threads_per_allocation] = {allocations(dep)} x "
            f"{dep.num_threads} = {wanted} processors are requested; one deployment may use at most "
            f"{self.processors} and all deployments together {self.total}, of which {used} are in use. "
            f"At most [{fits}] allocations of {dep.num_threads} thread(s) fit now; ask for fewer, stop other "
            f"deployments, or raise --max-allocated-processors (${ENV}) up to the machine's processors"
        )


def allocations(dep: Deployment) -> int:
    """The allocations a deployment holds for sure: its fixed count, or its adaptive minimum."""
    if dep.adaptive_enabled:
        return int((dep.adaptive or {}).get("min_number_of_allocations") or 0)
    return dep.num_allocations or 1


def demand(dep: Deployment) -> int:
    return allocations(dep) * dep.num_threads
