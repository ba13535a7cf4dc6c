"""The status of an endpoint or model deployment, computed purely from what the cluster shows.

Inputs are the workload Deployment and its pods (as dicts from the API); output is the CR's
``status`` with Elasticsearch's ``state`` and allocation counts plus standard Kubernetes
conditions (``Ready``, ``ModelReady``, ``Progressing``), so ``kubectl wait --for=condition=Ready``
and Argo CD health checks work. Condition times only move when a condition's status changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...worker.server import EXIT_MODEL_FAILED


@dataclass(frozen=True)
class PodFindings:
    ready: int = 0
    downloading: int = 0
    pull_failure: str | None = None
    load_failure: str | None = None
    waiting: str | None = None  # e.g. ImagePullBackOff, Unschedulable
    trouble: tuple[str, str] | None = None  # (reason, message): a crash loop, OOM kill or image pull failure


# What a pod or rollout failure shows as (the Ready condition's reason): Ready=False at once, and state
# `failed` once it has lasted `failure_after_s` (ProgressDeadlineExceeded: Kubernetes' own deadline, at once).
IMMEDIATE_FAILURES = {"ProgressDeadlineExceeded"}


def _is_ready(pod: dict[str, Any]) -> bool:
    if pod.get("metadata", {}).get("deletionTimestamp"):
        return False
    for c in pod.get("status", {}).get("conditions", []) or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def _terminated_message(state: dict[str, Any] | None) -> tuple[int | None, str | None]:
    term = (state or {}).get("terminated")
    if not term:
        return None, None
    return term.get("exitCode"), (term.get("message") or term.get("reason") or "").strip() or None


def _pull_trouble(wait: dict[str, Any] | None) -> tuple[str, str] | None:
    if wait and wait.get("reason") in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
        return "ImagePullFailed", f"{wait['reason']}: {wait.get('message') or 'the image cannot be pulled'}"
    return None


def _crash_trouble(container: dict[str, Any]) -> tuple[str, str] | None:
    state, last = container.get("state") or {}, container.get("lastState") or {}
    term = last.get("terminated") or state.get("terminated") or {}
    restarts = container.get("restartCount") or 0
    if term.get("reason") == "OOMKilled":
        return "OOMKilled", (f"the {container.get('name')} container was killed for using more memory than its "
                             f"limit ({restarts} restarts); raise the memory (spec.placement.resources)")
    wait = state.get("waiting") or {}
    if wait.get("reason") == "CrashLoopBackOff":
        detail = (term.get("message") or "").strip() or f"exit code {term.get('exitCode')}"
        return "CrashLoopBackOff", f"the {container.get('name')} container keeps exiting ({restarts} restarts): {detail}"
    return None


def workload_trouble(workload: dict[str, Any] | None) -> tuple[str, str] | None:
    """A rollout past its progress deadline, or pods the ReplicaSet could not create (quota, admission)."""
    for c in ((workload or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("status") == "False" and \
                c.get("reason") == "ProgressDeadlineExceeded":
            return "ProgressDeadlineExceeded", c.get("message") or "the rollout exceeded its progress deadline"
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            return c.get("reason") or "FailedCreate", c.get("message") or "pods could not be created"
    return None


def examine_pods(pods: list[dict[str, Any]]) -> PodFindings:
    ready = downloading = 0
    pull_failure = load_failure = waiting = None
    trouble: tuple[str, str] | None = None
    for pod in pods:
        status = pod.get("status", {}) or {}
        if _is_ready(pod):
            ready += 1
            continue
        for c in status.get("conditions", []) or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                waiting = f"{c.get('reason', 'Unschedulable')}: {c.get('message', '')}".strip(": ")
        for init in status.get("initContainerStatuses", []) or []:
            if init.get("name") != "pull-model":
                continue
            state = init.get("state", {}) or {}
            if "running" in state:
                downloading += 1
            code, message = _terminated_message(state)
            last_code, last_message = _terminated_message(init.get("lastState"))
            if code not in (None, 0):
                pull_failure = message or f"model download exited with code {code}"
            elif last_code not in (None, 0) and "waiting" in state:
                pull_failure = last_message or f"model download exited with code {last_code}"
            if "waiting" in state and state["waiting"].get("reason") not in (None, "PodInitializing"):
                waiting = waiting or state["waiting"].get("reason")
            trouble = trouble or _pull_trouble(state.get("waiting"))
        for container in status.get("containerStatuses", []) or []:
            if container.get("name") != "worker":
                continue
            for s in (container.get("state"), container.get("lastState")):
                code, message = _terminated_message(s)
                if code == EXIT_MODEL_FAILED:
                    load_failure = message or "the model failed to load"
            wait = (container.get("state", {}) or {}).get("waiting")
            if wait and wait.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
                waiting = waiting or f"{wait.get('reason')}: {wait.get('message', '')}".strip(": ")
            trouble = trouble or _pull_trouble(wait) or _crash_trouble(container)
    return PodFindings(ready, downloading, pull_failure, load_failure, waiting, trouble)


def _seconds_between(start: str, end: str) -> float:
    import datetime

    def parse(value: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))

    try:
        return (parse(end) - parse(start)).total_seconds()
    except ValueError:
        return 0.0


def _condition(kind: str, ok: bool | None, reason: str, message: str, generation: int | None,
               previous: dict[str, dict[str, Any]], now: str) -> dict[str, Any]:
    status = "Unknown" if ok is None else ("True" if ok else "False")
    old = previous.get(kind)
    since = old["lastTransitionTime"] if old and old.get("status") == status and old.get(
        "lastTransitionTime") else now
    out = {"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": since}
    if generation is not None:
        out["observedGeneration"] = generation
    return out


def compute_status(
    *,
    deployment_id: str | None,
    model_id: str | None,
    target: int,
    workload: dict[str, Any] | None,
    pods: list[dict[str, Any]],
    generation: int | None,
    problem: tuple[str, str] | None,
    previous: dict[str, Any] | None,
    now: str,
    workload_name: str | None = None,
    selector: str | None = None,
    failure_after_s: float = 300.0,
) -> dict[str, Any]:
    """``problem`` is (reason, message) when the spec cannot be served at all (invalid, model unknown)."""
    previous = previous or {}
    prev_conditions = {c["type"]: c for c in previous.get("conditions", []) or []}
    found = examine_pods(pods)
    ready = found.ready
    wstatus = (workload or {}).get("status", {}) or {}
    rolling = bool(workload) and (
        (wstatus.get("updatedReplicas") or 0) < target or (wstatus.get("replicas") or 0) > target
    )
    failure = found.pull_failure or found.load_failure
    trouble = workload_trouble(workload) or found.trouble
    failing: dict[str, str] | None = None
    if problem:
        state, reason, message = "failed", problem[0], problem[1]
    elif ready > 0 or target == 0:
        state = "started"
        reason = "FullyAllocated" if ready >= target else "PartiallyAllocated"
        message = f"{ready}/{target} allocations ready" if target else "scaled to zero; requests scale it up"
    elif failure:
        state, reason = "failed", "ModelPullFailed" if found.pull_failure else "ModelLoadFailed"
        message = failure
    elif trouble:
        reason, message = trouble
        before = previous.get("failure") or {}
        failing = {"reason": reason, "since": before["since"] if before.get("reason") == reason and
                   before.get("since") else now}
        lasted = _seconds_between(failing["since"], now)
        state = "failed" if reason in IMMEDIATE_FAILURES or lasted >= failure_after_s else "starting"
        if state == "starting":
            message += f" (failed if it lasts {int(failure_after_s)} s)"
    elif found.downloading:
        state, reason, message = "starting", "ModelDownloading", "the model is being downloaded into the cache"
    elif found.waiting:
        state, reason, message = "starting", "Pending", found.waiting
    else:
        state, reason, message = "starting", "Starting", f"0/{target} allocations ready"
    allocation_state = "fully_allocated" if ready >= target else ("started" if ready else "starting")

    if ready > 0:
        model_ok, model_reason, model_message = True, "Loaded", "the model is loaded and warmed up"
    elif problem:
        model_ok, model_reason, model_message = False, problem[0], problem[1]
    elif failure or trouble:
        model_ok, model_reason, model_message = False, reason, message
    elif target == 0:
        model_ok, model_reason, model_message = None, "ScaledToZero", "no allocation is running"
    else:
        model_ok, model_reason, model_message = False, reason, message
    progressing = not problem and state != "failed" and (ready != target or rolling)
    prog_reason = "Stable" if not progressing else ("RollingUpdate" if rolling else "Scaling")
    prog_message = f"{ready}/{target} allocations ready"
    conditions = [
        _condition("Ready", state == "started", reason, message, generation, prev_conditions, now),
        _condition("ModelReady", model_ok, model_reason, model_message, generation, prev_conditions, now),
        _condition("Progressing", progressing, prog_reason, prog_message, generation, prev_conditions, now),
    ]
    out: dict[str, Any] = {
        "state": state,
        "allocation_state": allocation_state,
        "allocation_count": ready,
        "target_allocation_count": target,
        "allocations": f"{ready}/{target}",
        "conditions": conditions,
    }
    if deployment_id:
        out["deployment_id"] = deployment_id
    if model_id:
        out["model_id"] = model_id
    if workload_name:
        out["workload"] = workload_name
    if selector:
        out["selector"] = selector
    if generation is not None:
        out["observedGeneration"] = generation
    out["failure"] = failing  # None removes it (merge patch)
    out["reason"] = message if state != "started" else ""
    return out
