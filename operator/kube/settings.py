"""Settings of the operator and of the worker pods it creates: one frozen object, read from a file.

The Helm chart renders them into a ConfigMap mounted at ``/etc/infernetes/operator.yaml``; any
field can also be set with an ``INFERNETES_<FIELD>`` environment variable (JSON for structured
values). Unknown keys are an error, so a typo in the chart values does not pass silently.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from ..version import __version__

DATA_DIR = "/var/lib/infernetes"


class ExtraModel(BaseModel):
    """A model that is not built in, and where its pods download it from."""

    model_config = ConfigDict(extra="forbid")
    repo: str = Field(description="hub repository, e.g. sentence-transformers/msmarco-MiniLM-L12-cos-v5")
    revision: str = "main"
    task_type: str = Field(pattern="^(text_embedding|sparse_embedding|rerank)$")
    size_bytes: int | None = Field(None, description="weights size, to size the memory request")


class OperatorSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    image: str = Field(f"ghcr.io/infernetes/infernetes:{__version__}", description="image of worker pods")
    image_pull_policy: str = "IfNotPresent"
    image_pull_secrets: list[str] = Field(default_factory=list)
    worker_port: int = 8080
    # Shared model cache: a ReadWriteMany PVC holding the model store; else each pod downloads into an emptyDir.
    model_cache_pvc: str | None = None
    model_cache_size: str = "10Gi"
    model_hub: str | None = Field(None, description="hub URL for downloads (default huggingface.co)")
    model_repository: str | None = Field(
        None, description="Elastic's model repository (https:// or file:// URL) for the built-in models: Elastic's "
                          "own ELSER, E5 and rerank files instead of the hub's open checkpoints")
    # Eland uploads (operator/kube/uploads.py): the gateway keeps them in this folder (its upload volume), and
    # worker pods pull them from this URL (the gateway Service's internal route). Unset: uploads are refused.
    uploads_dir: str | None = None
    uploads_url: str | None = None
    # A model store baked into the image (air-gapped clusters): models found there are copied, not downloaded.
    seed_dir: str | None = None
    hub_token_secret: str | None = Field(None, description="Secret with key HF_TOKEN for private hub models")
    # Workers then accept only callers that send this credential (the gateway reads the same token from
    # $INFERNETES_WORKER_AUTH_TOKEN); the Secret must exist in each namespace where worker pods run.
    worker_credential_secret: str | None = Field(
        None, description="Secret with key `token`: the credential worker pods demand from the gateway")
    models: dict[str, ExtraModel] = Field(default_factory=dict, description="models beyond the built-in ones")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] = Field(default_factory=dict)
    priority_class_name: str | None = None
    # Pods of `priority: low` deployments: a PriorityClass with a lower value, so they are preempted first.
    low_priority_class_name: str | None = None
    worker_service_account: str | None = None
    pod_labels: dict[str, str] = Field(default_factory=dict)
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    memory_overhead_mib: int = 400
    startup_timeout_s: int = 600
    drain_timeout_s: int = 30
    queue_capacity: int = 1024
    max_batch_tokens: int = 8192
    # Allocations an adaptive endpoint may reach when max_number_of_allocations is unset.
    adaptive_cap: int = 8
    # Adaptive allocations (see infernetes.operator.autoscaler.AutoscalerSettings).
    autoscale_interval_s: float = 5.0
    target_utilization: float = 0.75
    scale_down_window_s: float = 60.0
    scale_to_zero_after_s: float = 600.0
    status_interval_s: float = 5.0
    # A pod or rollout failure (CrashLoopBackOff, OOMKilled, image pull, quota) shows as Ready=False at once,
    # and as state `failed` (Argo CD: Degraded) once it has lasted this long; ProgressDeadlineExceeded at once.
    failure_after_s: float = 300.0
    # Seconds before a blocked deletion or a missing dependency is looked at again.
    retry_delay_s: float = 15.0

    def autoscaler(self) -> Any:
        from ..autoscaler import AutoscalerSettings

        return AutoscalerSettings(interval_s=self.autoscale_interval_s, target_utilization=self.target_utilization,
                                  scale_down_window_s=self.scale_down_window_s,
                                  idle_to_zero_s=self.scale_to_zero_after_s)

    @classmethod
    def load(cls, path: Path | str | None = None, env: dict[str, str] | None = None) -> OperatorSettings:
        env = os.environ if env is None else env
        data: dict[str, Any] = {}
        path = path or env.get("INFERNETES_OPERATOR_CONFIG")
        if path and Path(path).is_file():
            data = yaml.safe_load(Path(path).read_text()) or {}
        for name, field in cls.model_fields.items():
            raw = env.get("INFERNETES_" + name.upper())
            if raw is None:
                continue
            annotation = str(field.annotation)
            data[name] = json.loads(raw) if any(t in annotation for t in ("dict", "list", "int", "float")) else raw
        return cls.model_validate(data)
