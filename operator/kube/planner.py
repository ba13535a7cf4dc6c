"""The workload of one model deployment, planned purely: records in, Kubernetes manifests out.

``plan(deployment, ...)`` returns the Deployment and Service that serve a model deployment; it
does no I/O, so every field is covered by table tests and validated against the real Kubernetes
schemas. The operator applies the plan (:mod:`infernetes.operator.kube.apply`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from ...worker.config import AUTH_TOKEN_ENV
from ...worker.download import builtin, canonical_id
from ...worker.elastic_repository import REPOSITORY_TOKEN_ENV
from ..records import Deployment
from . import (
    ANNOTATION_DEPLOYMENT_ID,
    ANNOTATION_MODEL_ID,
    LABEL_COMPONENT,
    LABEL_DEPLOYMENT,
    LABEL_MANAGED,
    LABEL_MODEL,
    LABEL_NAME,
    MANAGER,
)
from .names import k8s_name, label_value
from .placement import GPU, Placement
from .settings import DATA_DIR, OperatorSettings

ANNOTATION_TEMPLATE_HASH = "infernetes.dev/template-hash"
MIB = 1024 * 1024
# Rough weight sizes of the built-in checkpoints, for memory requests before anything is downloaded.
BUILTIN_SIZES = {".multilingual-e5-small": 471 * MIB, ".elser_model_2": 268 * MIB, ".rerank-v1": 91 * MIB}


@dataclass(frozen=True)
class Owner:
    api_version: str
    kind: str
    name: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {"apiVersion": self.api_version, "kind": self.kind, "name": self.name, "uid": self.uid,
                "controller": True, "blockOwnerDeletion": True}


@dataclass(frozen=True)
class Workload:
    deployment: dict[str, Any]
    service: dict[str, Any]
    disruption_budget: dict[str, Any] | None = None

    @property
    def manifests(self) -> list[dict[str, Any]]:
        """What the operator applies, in order."""
        return [m for m in (self.deployment, self.service, self.disruption_budget) if m is not None]

    @property
    def name(self) -> str:
        return self.deployment["metadata"]["name"]


def workload_name(deployment_id: str) -> str:
    return "infernetes-" + k8s_name(deployment_id, reserve=len("infernetes-"))


def selector(deployment_id: str) -> dict[str, str]:
    return {LABEL_DEPLOYMENT: label_value(deployment_id)}


def selector_string(deployment_id: str) -> str:
    return ",".join(f"{k}={v}" for k, v in selector(deployment_id).items())


def memory_mib(model_id: str, settings: OperatorSettings, size_bytes: int | None = None) -> int:
    size = size_bytes or BUILTIN_SIZES.get(canonical_id(model_id))
    extra = settings.models.get(model_id)
    if size is None and extra is not None:
        size = extra.size_bytes
    size_mib = (size or 500 * MIB) // MIB
    # Weights once, plus activations and the Python runtime; rounded up to 64 MiB.
    need = int(size_mib * 1.5) + settings.memory_overhead_mib
    return (need + 63) // 64 * 64


def pull_command(model_id: str, settings: OperatorSettings) -> list[str]:
    command = ["infernetes", "models", "ensure", model_id, "--data-dir", DATA_DIR]
    extra = settings.models.get(model_id)
    if extra is not None and builtin(model_id) is None:
        command += ["--repo", extra.repo, "--revision", extra.revision, "--task", extra.task_type]
    if settings.model_hub:
        command += ["--hub", settings.model_hub]
    if settings.model_repository and builtin(model_id) is not None:
        command += ["--repository", settings.model_repository]
    elif _uploaded(model_id, settings):
        command += ["--repository", str(settings.uploads_url)]
    if settings.seed_dir:
        command += ["--seed-dir", settings.seed_dir]
    return command


def _uploaded(model_id: str, settings: OperatorSettings) -> bool:
    """A model neither built in nor declared: one uploaded to the gateway (Eland), when uploads are set up."""
    return bool(settings.uploads_url) and builtin(model_id) is None and model_id not in settings.models


def pull_env(model_id: str, settings: OperatorSettings) -> list[dict[str, Any]]:
    """The pull's credential for the gateway's uploads route: the worker credential, sent only there."""
    if not (_uploaded(model_id, settings) and settings.worker_credential_secret):
        return []
    return [{"name": REPOSITORY_TOKEN_ENV, "valueFrom": {"secretKeyRef": {
        "name": settings.worker_credential_secret, "key": "token"}}}]


def _security() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _template_hash(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:16]


def plan(
    dep: Deployment,
    *,
    namespace: str,
    replicas: int,
    owner: Owner,
    settings: OperatorSettings,
    model_size_bytes: int | None = None,
    placement: Placement | None = None,
) -> Workload:
    """The worker Deployment, Service and PodDisruptionBudget of a deployment.

    ``placement`` is the endpoint's Kubernetes-only block: it adds to (node selector, tolerations) or replaces
    (affinity, priority class) the settings' cluster-wide scheduling, and adds resources and GPUs. A
    ``priority: low`` deployment runs as Elasticsearch runs it: one allocation of one thread that may be
    evicted, i.e. a small CPU request under its one-CPU limit (Burstable, evicted first under pressure) and
    the settings' low priority class (preempted first)."""
    name = workload_name(dep.deployment_id)
    low = dep.priority == "low"
    labels = {
        LABEL_NAME: "infernetes-worker",
        LABEL_COMPONENT: "worker",
        LABEL_MANAGED: MANAGER,
        LABEL_MODEL: label_value(dep.model_id),
        **selector(dep.deployment_id),
    }
    annotations = {ANNOTATION_DEPLOYMENT_ID: dep.deployment_id, ANNOTATION_MODEL_ID: dep.model_id}
    memory = memory_mib(dep.model_id, settings, model_size_bytes)
    threads = "1" if low else str(dep.num_threads)
    hub_env: list[dict[str, Any]] = []
    if settings.hub_token_secret:
        hub_env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": settings.hub_token_secret, "key": "HF_TOKEN", "optional": True}}})
    common_env = [{"name": "HF_HOME", "value": "/tmp/hf"}, {"name": "HOME", "value": "/tmp"}]
    cache_mount = {"name": "model-cache", "mountPath": DATA_DIR}
    tmp_mount = {"name": "tmp", "mountPath": "/tmp"}
    pull = {
        "name": "pull-model",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": pull_command(dep.model_id, settings),
        "env": common_env + hub_env + pull_env(dep.model_id, settings),
        "resources": {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "securityContext": _security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [cache_mount, tmp_mount],
    }
    worker_env = [
        {"name": "INFERNETES_WORKER_MODEL_DIR", "value": f"{DATA_DIR}/models/{canonical_id(dep.model_id)}"},
        {"name": "INFERNETES_WORKER_DEPLOYMENT_ID", "value": dep.deployment_id},
        {"name": "INFERNETES_WORKER_ALLOCATION_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "INFERNETES_WORKER_NUM_THREADS", "value": threads},
        {"name": "INFERNETES_WORKER_HOST", "value": "0.0.0.0"},  # noqa: S104 - a pod's own interface
        {"name": "INFERNETES_WORKER_PORT", "value": str(settings.worker_port)},
        {"name": "INFERNETES_WORKER_QUEUE_CAPACITY", "value": str(dep.queue_capacity)},
        {"name": "INFERNETES_WORKER_MAX_BATCH_TOKENS", "value": str(settings.max_batch_tokens)},
        {"name": "INFERNETES_WORKER_DRAIN_TIMEOUT", "value": str(settings.drain_timeout_s)},
        {"name": "INFERNETES_WORKER_TERMINATION_LOG", "value": "/dev/termination-log"},
        {"name": "OMP_NUM_THREADS", "value": threads},
        {"name": "MKL_NUM_THREADS", "value": threads},
        *common_env,
    ]
    if settings.worker_credential_secret:
        # Not optional: a worker missing its credential must not start open to every pod of the cluster.
        worker_env.append({"name": AUTH_TOKEN_ENV, "valueFrom": {"secretKeyRef": {
            "name": settings.worker_credential_secret, "key": "token"}}})
    probe = {"httpGet": {"path": "/readyz", "port": "http"}}
    worker = {
        "name": "worker",
        "image": settings.image,
        "imagePullPolicy": settings.image_pull_policy,
        "command": ["infernetes", "worker"],
        "env": worker_env,
        "ports": [{"name": "http", "containerPort": settings.worker_port, "protocol": "TCP"}],
        "resources": _resources(threads, memory, low, settings, placement),
        # Patient enough for loading a large model, and asked every second, so that a pod is Ready (and a request
        # held at zero allocations answered) within a second of its model loading; readiness then follows the
        # model, liveness the process.
        "startupProbe": {**probe, "periodSeconds": 1, "failureThreshold": max(1, settings.startup_timeout_s)},
        "readinessProbe": {**probe, "periodSeconds": 5, "failureThreshold": 2},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10,
                          "failureThreshold": 6, "timeoutSeconds": 5},
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},  # let endpoints drop the pod before SIGTERM
        "securityContext": _security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{**cache_mount, "readOnly": True}, tmp_mount],
    }
    if settings.model_cache_pvc:
        cache_volume: dict[str, Any] = {"name": "model-cache",
                                        "persistentVolumeClaim": {"claimName": settings.model_cache_pvc}}
    else:
        cache_volume = {"name": "model-cache", "emptyDir": {"sizeLimit": settings.model_cache_size}}
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "fsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "terminationGracePeriodSeconds": settings.drain_timeout_s + 15,
        "initContainers": [pull],
        "containers": [worker],
        "volumes": [cache_volume, {"name": "tmp", "emptyDir": {"sizeLimit": "2Gi"}}],
        # Allocations spread over nodes and zones (a zone outage takes only its share of them).
        "topologySpreadConstraints": [{
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector(dep.deployment_id)},
        } for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")],
    }
    node_selector = {**settings.node_selector, **(placement.nodeSelector if placement else {})}
    if node_selector:
        pod_spec["nodeSelector"] = node_selector
    tolerations = list(settings.tolerations) + [
        t.model_dump(exclude_none=True) for t in (placement.tolerations if placement else [])]
    if placement is not None and placement.gpus:  # GPU nodes are usually tainted nvidia.com/gpu:NoSchedule
        gpu_toleration = {"key": GPU, "operator": "Exists", "effect": "NoSchedule"}
        if gpu_toleration not in tolerations:
            tolerations.append(gpu_toleration)
    if tolerations:
        pod_spec["tolerations"] = tolerations
    affinity = placement.affinity if placement is not None and placement.affinity is not None else settings.affinity
    if affinity:
        pod_spec["affinity"] = dict(affinity)
    priority_class = (placement.priorityClassName if placement is not None else None) or (
        settings.low_priority_class_name if low else None) or settings.priority_class_name
    if priority_class:
        pod_spec["priorityClassName"] = priority_class
    if settings.worker_service_account:
        pod_spec["serviceAccountName"] = settings.worker_service_account
    if settings.image_pull_secrets:
        pod_spec["imagePullSecrets"] = [{"name": n} for n in settings.image_pull_secrets]
    template = {
        "metadata": {
            "labels": {**settings.pod_labels, **labels},
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(settings.worker_port),
                "prometheus.io/path": "/metrics",
                **settings.pod_annotations,
                **annotations,
            },
        },
        "spec": pod_spec,
    }
    meta = {
        "name": name,
        "namespace": namespace,
        "labels": labels,
        "annotations": {**annotations, ANNOTATION_TEMPLATE_HASH: _template_hash(template)},
        "ownerReferences": [owner.reference()],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(dep.deployment_id)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "revisionHistoryLimit": 3,
            "progressDeadlineSeconds": settings.startup_timeout_s + 300,
            "template": template,
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {k: v for k, v in meta.items() if k != "annotations"} | {"annotations": annotations},
        "spec": {
            "type": "ClusterIP",
            "selector": selector(dep.deployment_id),
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    # Voluntary disruptions (node drains, cluster upgrades) take one allocation at a time; with one replica
    # maxUnavailable 1 still lets a drain proceed (a PDB must never block a node forever).
    budget = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {k: v for k, v in meta.items() if k != "annotations"} | {"annotations": annotations},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(dep.deployment_id)}},
    }
    return Workload(deployment=deployment, service=service, disruption_budget=budget)


def _resources(threads: str, memory: int, low: bool, settings: OperatorSettings,
               placement: Placement | None) -> dict[str, Any]:
    requests = {"cpu": "100m" if low else threads, "memory": f"{memory}Mi"}
    limits = {"cpu": threads, "memory": f"{memory * 2}Mi"}
    if placement is not None and placement.resources is not None:
        requests.update(placement.resources.requests)
        limits.update(placement.resources.limits)
        if "memory" in placement.resources.requests and "memory" not in placement.resources.limits:
            limits["memory"] = _at_least(limits["memory"], placement.resources.requests["memory"])
    if placement is not None and placement.gpus:
        requests[GPU] = limits[GPU] = str(placement.gpus)
    return {"requests": requests, "limits": limits}


def _at_least(limit: str, request: str) -> str:
    """The larger of two memory quantities (a request above the planned limit raises the limit)."""
    from kubernetes.utils.quantity import parse_quantity

    return request if parse_quantity(request) > parse_quantity(limit) else limit


def desired_replicas(dep: Deployment, current: int | None, settings: OperatorSettings) -> int:
    """Fixed allocations, or for adaptive ones the current count (the autoscaler's) kept within bounds;
    a low-priority deployment has one allocation (as in Elasticsearch)."""
    if dep.priority == "low":
        return 1
    if not dep.adaptive_enabled:
        return dep.num_allocations or 1
    lo, hi = dep.bounds(settings.adaptive_cap)
    return min(max(current if current is not None else lo, lo), hi)
