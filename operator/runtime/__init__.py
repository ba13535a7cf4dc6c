"""Runtimes make deployments real: worker processes on this machine, or pods in a cluster.

Both expose the same small surface to the control plane (:class:`Runtime`) and report the same
:class:`DeploymentStatus`, from which Elasticsearch's ``_stats`` shapes are built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..records import Deployment


@dataclass
class AllocationStatus:
    allocation_id: str
    state: str  # starting | started | stopping | failed
    url: str | None = None
    restarts: int = 0
    started_at: float | None = None
    failure: str | None = None


@dataclass
class DeploymentStatus:
    deployment_id: str
    target: int
    allocations: list[AllocationStatus] = field(default_factory=list)
    failure: str | None = None
    stopping: bool = False
    started_at: float | None = None
    # Model download progress while the model is being fetched: {"downloaded_bytes", "total_bytes", ...}
    download: dict[str, Any] | None = None

    @property
    def ready(self) -> int:
        return sum(1 for a in self.allocations if a.state == "started")

    @property
    def state(self) -> str:
        """Elasticsearch's deployment state: starting | started | stopping | failed."""
        if self.stopping:
            return "stopping"
        if self.failure and self.ready == 0:
            return "failed"
        if self.ready > 0 or self.target == 0:
            return "started"
        return "starting"

    @property
    def allocation_state(self) -> str:
        """Elasticsearch's allocation_status.state: starting | started | fully_allocated."""
        if self.ready >= self.target:
            return "fully_allocated"
        return "started" if self.ready > 0 else "starting"


class Runtime(Protocol):
    async def apply(self, deployment: Deployment) -> None:
        """Make the deployment run (start it, or change its allocations)."""

    async def remove(self, deployment_id: str) -> None:
        """Stop all allocations of a deployment (gracefully) and forget it."""

    async def scale(self, deployment_id: str, allocations: int) -> None:
        """Set the target allocation count (the autoscaler's decision)."""

    def status(self, deployment_id: str) -> DeploymentStatus | None: ...

    async def wait(self, deployment_id: str, timeout: float, *, fully: bool = True) -> DeploymentStatus:
        """Wait until started (fully allocated if ``fully``), failed, or the timeout passes."""

    async def node_stats(self, deployment_id: str) -> list[dict[str, Any]]: ...

    async def infer(self, deployment_id: str, payload: bytes, timeout: float,
                    path: str = "/infer") -> tuple[int, bytes, dict[str, str]]:
        """Run one request on an allocation of the deployment: inference (``/infer``), or the worker's
        tokenizer (``/tokenize``, ``/decode``, ``/token_ids``)."""

    async def close(self) -> None: ...
