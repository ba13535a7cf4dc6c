"""What the control plane stores: endpoints and the model deployments that serve them.

An endpoint (Elasticsearch's inference endpoint) points at a deployment; a deployment is one
model served by N allocations of T threads. An endpoint normally owns a deployment named after
it; ``deployment_id`` lets several endpoints share one, and ``_ml/trained_models/{id}/deployment/_start``
creates deployments no endpoint owns.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Deployment:
    deployment_id: str
    model_id: str
    task_type: str
    num_threads: int
    num_allocations: int | None = None  # the fixed count; None while adaptive allocations are enabled
    adaptive: dict[str, Any] | None = None  # Elasticsearch's adaptive_allocations object, as given
    owner: str | None = None  # the inference id that created it, None when started on its own
    queue_capacity: int = 1024
    priority: str = "normal"
    created: float = field(default_factory=time.time)

    @property
    def adaptive_enabled(self) -> bool:
        return bool(self.adaptive and self.adaptive.get("enabled"))

    def bounds(self, cap: int) -> tuple[int, int]:
        """[min, max] allocations for adaptive deployments; ``cap`` stands in for an unset max."""
        a = self.adaptive or {}
        lo = a.get("min_number_of_allocations") or 0
        hi = a.get("max_number_of_allocations") or max(cap, lo, 1)
        return lo, max(hi, lo)

    def initial_allocations(self, cap: int) -> int:
        if self.adaptive_enabled:
            return self.bounds(cap)[0]
        return self.num_allocations or 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Deployment:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})

    def with_(self, **changes: Any) -> Deployment:
        return replace(self, **changes)


@dataclass(frozen=True)
class Endpoint:
    inference_id: str
    task_type: str
    deployment_id: str
    body: dict[str, Any]  # the validated PUT body, as the user wrote it (None fields dropped)
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Endpoint:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})
