"""Custom resources to control-plane records and back: one mapping for the operator and the gateway."""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from ..errors import ValidationFailed
from ..records import Deployment, Endpoint
from ..service import deployment_for
from ..spec import DeploymentResourceSpec, EndpointResourceSpec, parse_endpoint, spec_errors
from . import API_VERSION, DEPLOYMENT_KIND, DEPLOYMENTS, ENDPOINT_KIND, ENDPOINTS
from .names import k8s_name


def _timestamp(cr: dict[str, Any]) -> float:
    from datetime import datetime

    raw = cr.get("metadata", {}).get("creationTimestamp")
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00")).timestamp() if raw else 0.0
    except ValueError:
        return 0.0


def endpoint_from_cr(cr: dict[str, Any], queue_capacity: int = 1024) -> tuple[Endpoint, Deployment | None]:
    """The endpoint a CR declares, and the deployment it owns (None when it reuses one).
    Raises ValidationFailed (or another InfernetesError) for a spec Elasticsearch would reject."""
    try:
        parsed = EndpointResourceSpec.model_validate(cr.get("spec") or {})
    except ValidationError as exc:
        raise ValidationFailed(spec_errors(exc)) from None
    inference_id = parsed.inference_id or cr["metadata"]["name"]
    spec = parse_endpoint(parsed.task_type, inference_id, parsed.body())
    endpoint = Endpoint(inference_id=inference_id, task_type=parsed.task_type, deployment_id=spec.deployment_id,
                        body=parsed.body(), created=_timestamp(cr))
    if spec.reuses_deployment:
        return endpoint, None
    dep = deployment_for(spec, queue_capacity)
    return endpoint, dep.with_(created=_timestamp(cr))


def deployment_from_cr(cr: dict[str, Any], queue_capacity: int = 1024) -> Deployment:
    try:
        spec = DeploymentResourceSpec.model_validate(cr.get("spec") or {})
    except ValidationError as exc:
        raise ValidationFailed(spec_errors(exc)) from None
    adaptive = spec.adaptive_allocations
    return Deployment(
        deployment_id=spec.deployment_id or spec.model_id,
        model_id=spec.model_id,
        task_type="",  # filled from the model by whoever knows the models
        num_threads=spec.threads_per_allocation,
        num_allocations=None if adaptive and adaptive.enabled else (spec.number_of_allocations or 1),
        adaptive=adaptive.model_dump(exclude_none=True) if adaptive else None,
        owner=None,
        queue_capacity=spec.queue_capacity or queue_capacity,
        priority=spec.priority,
        created=_timestamp(cr),
    )


def endpoint_to_cr(endpoint: Endpoint, namespace: str) -> dict[str, Any]:
    name = k8s_name(endpoint.inference_id)
    spec: dict[str, Any] = {**endpoint.body, "task_type": endpoint.task_type}
    if name != endpoint.inference_id:
        spec["inference_id"] = endpoint.inference_id
    return {"apiVersion": API_VERSION, "kind": ENDPOINT_KIND,
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def deployment_to_cr(dep: Deployment, namespace: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"model_id": dep.model_id, "deployment_id": dep.deployment_id,
                            "threads_per_allocation": dep.num_threads, "priority": dep.priority,
                            "queue_capacity": dep.queue_capacity}
    if dep.adaptive_enabled:
        spec["adaptive_allocations"] = dep.adaptive
    else:
        spec["number_of_allocations"] = dep.num_allocations or 1
    return {"apiVersion": API_VERSION, "kind": DEPLOYMENT_KIND,
            "metadata": {"name": k8s_name(dep.deployment_id), "namespace": namespace}, "spec": spec}


def own_deployment_id(cr: dict[str, Any]) -> str | None:
    """The deployment id a resource provides: a ModelDeployment's, or an endpoint's own (not when reusing)."""
    spec = cr.get("spec") or {}
    if cr.get("kind") == DEPLOYMENT_KIND:
        return spec.get("deployment_id") or spec.get("model_id")
    ss = spec.get("service_settings") or {}
    if ss.get("model_id") is None:
        return None
    return ss.get("deployment_id") or spec.get("inference_id") or cr["metadata"]["name"]


async def find_owner(kube: Any, namespace: str, deployment_id: str) -> dict[str, Any] | None:
    """The resource that provides a deployment id in a namespace (kind set on the returned dict): the earliest
    created, then by name and kind, whatever order a list comes in (the operator's rule, which in addition
    keeps a live workload's controller)."""
    candidates = []
    for plural, kind in ((DEPLOYMENTS, DEPLOYMENT_KIND), (ENDPOINTS, ENDPOINT_KIND)):
        for cr in await kube.list(API_VERSION, plural, namespace):
            cr = {**cr, "kind": kind}
            if not cr["metadata"].get("deletionTimestamp") and own_deployment_id(cr) == deployment_id:
                candidates.append(cr)
    if not candidates:
        return None
    return min(candidates, key=lambda cr: (str(cr["metadata"].get("creationTimestamp") or ""),
                                           str(cr["metadata"].get("name")), cr["kind"]))
