"""Per-endpoint placement: where and with what one endpoint's worker pods run, in Kubernetes only.

An optional ``placement`` block next to the Elasticsearch body of an InferenceEndpoint (or a
ModelDeployment) spec; the body itself stays verbatim. Field names are the Kubernetes pod spec's own
(camelCase), so tolerations and affinities paste from existing manifests. The model validates the
REST/kopf side; :func:`crd_schema` gives the same constraints to the CRD, so ``kubectl apply``
refuses what the operator would refuse.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

QUANTITY = r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P)?$"
NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
GPU = "nvidia.com/gpu"
MAX_GPUS = 16


def _check_resources(values: dict[str, str], where: str) -> dict[str, str]:
    for key, value in values.items():
        if key == "cpu":
            raise ValueError(f"[placement.resources.{where}.cpu] is not allowed: the CPU of an allocation follows "
                             "[num_threads] (threads_per_allocation)")
        if key == GPU:
            raise ValueError(f"[placement.resources.{where}.{GPU}] is not allowed: use [placement.gpus]")
        if not re.match(QUANTITY, value):
            raise ValueError(f"[placement.resources.{where}.{key}] must be a Kubernetes quantity, got [{value}]")
    return values


class Resources(BaseModel):
    """Requests and limits of the worker container beyond CPU (memory, ephemeral-storage, extended resources)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)

    @field_validator("requests")
    @classmethod
    def _requests(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_resources(v, "requests")

    @field_validator("limits")
    @classmethod
    def _limits(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_resources(v, "limits")


class Toleration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    tolerationSeconds: int | None = None  # noqa: N815 - the Kubernetes field name


class Placement(BaseModel):
    """Kubernetes-only scheduling of one endpoint's worker pods (the Elasticsearch body is untouched)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    resources: Resources | None = None
    gpus: int | None = Field(None, ge=0, le=MAX_GPUS)
    nodeSelector: dict[str, str] = Field(default_factory=dict)  # noqa: N815
    tolerations: list[Toleration] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    priorityClassName: str | None = Field(None, max_length=253, pattern=NAME)  # noqa: N815

    @classmethod
    def crd_schema(cls) -> dict[str, Any]:
        return crd_schema()

    @field_validator("affinity")
    @classmethod
    def _affinity(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and not set(v) <= {"nodeAffinity", "podAffinity", "podAntiAffinity"}:
            raise ValueError("[placement.affinity] takes nodeAffinity, podAffinity and podAntiAffinity")
        return v


def placement_of(spec: dict[str, Any] | None) -> Placement | None:
    """The placement block of a resource's spec (None when absent); raises ValueError when invalid."""
    raw = (spec or {}).get("placement")
    if raw is None:
        return None
    from pydantic import ValidationError

    try:
        return Placement.model_validate(raw)
    except ValidationError as exc:
        raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None


def crd_schema() -> dict[str, Any]:
    """The CRD's schema of ``spec.placement`` (the same constraints as :class:`Placement`)."""
    quantities = {"type": "object", "additionalProperties": {"type": "string", "pattern": QUANTITY}}
    no_cpu = [{"rule": "!('cpu' in self) && !('nvidia.com/gpu' in self)",
               "message": "cpu follows num_threads and GPUs come from placement.gpus"}]
    return {
        "type": "object",
        "description": "Kubernetes-only placement of this endpoint's worker pods: resources beyond CPU, GPUs, "
                       "node selector, tolerations, affinity, priority class. The Elasticsearch body is untouched.",
        "properties": {
            "resources": {"type": "object", "properties": {
                "requests": {**quantities, "x-kubernetes-validations": no_cpu},
                "limits": {**quantities, "x-kubernetes-validations": no_cpu}}},
            "gpus": {"type": "integer", "minimum": 0, "maximum": MAX_GPUS,
                     "description": f"{GPU} per worker pod (request and limit)."},
            "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
            "tolerations": {"type": "array", "items": {"type": "object", "properties": {
                "key": {"type": "string"},
                "operator": {"type": "string", "enum": ["Exists", "Equal"]},
                "value": {"type": "string"},
                "effect": {"type": "string", "enum": ["NoSchedule", "PreferNoSchedule", "NoExecute"]},
                "tolerationSeconds": {"type": "integer"}}}},
            "affinity": {"type": "object", "properties": {
                "nodeAffinity": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "podAffinity": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "podAntiAffinity": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
            "priorityClassName": {"type": "string", "maxLength": 253, "pattern": NAME},
        },
    }
